"""Experiments: comparison and reproduction pipelines, tuning sweeps and plots."""
