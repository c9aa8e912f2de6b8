"""Training: the run settings, run folder, trainer loop, checkpoints, guards and distributed helpers."""
