"""Foreshock gateway package."""
