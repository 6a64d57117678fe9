"""Fovea: service."""
