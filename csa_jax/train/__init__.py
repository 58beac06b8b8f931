"""Training: the optimizer, the data-parallel step, the loop, checkpoints, checks and telemetry."""
