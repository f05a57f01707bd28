"""Training and evaluation: `engine` (the loops, on accelerate), `recipe` (what a run trains
with: `TrainConfig`, `Hooks`, losses, schedules), `finetune` (one fine-tune path for every pruning
method: what each declares, built into `engine.train`), `launch` (N processes through accelerate's
notebook launcher), `hardware` (device facts asked without initialising CUDA)."""
