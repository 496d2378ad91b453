"""Runtime: mesh, optimizers by path rules, jitted steps, the training loop, checkpoints, logs."""
