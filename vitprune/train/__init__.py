"""Training and evaluation: `engine` (the loops, on accelerate), `recipe` (what a run trains
with: `TrainConfig`, `Hooks`, losses, schedules), `launch` (N processes through accelerate's
notebook launcher), `hardware` (device facts asked without initialising CUDA)."""
