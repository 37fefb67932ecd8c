"""The one training loop (teacher and student stages), checkpoints, metrics."""
