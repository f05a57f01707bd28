"""Training and evaluation: `engine` (the loops, on accelerate), `launch` (N processes through
accelerate's notebook launcher), `hardware` (device facts asked without initialising CUDA)."""
