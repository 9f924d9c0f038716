"""Evaluators that score policies against held-out labels (never used as training rewards)."""
