"""Fovea: training."""
