"""Training: one Trainer for every method, its optimizer and schedule, and atomic checkpoints."""
