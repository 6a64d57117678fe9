"""Fovea: models."""
