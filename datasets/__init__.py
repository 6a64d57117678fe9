"""Fovea: datasets."""
