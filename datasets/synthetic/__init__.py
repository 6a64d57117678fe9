"""Fovea: datasets/synthetic."""
