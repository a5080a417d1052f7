"""Training: settings, the loop, batches, checkpoints, distributed runs, the learning-rate schedule."""
