"""Evaluation: benchmarks, categories, checkpoint series, and the scaling analysis on top of their results."""
