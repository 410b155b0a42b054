"""Evaluation: the S-NI metrics (exact match and ROUGE-L, max over references) and their per-task aggregation."""
