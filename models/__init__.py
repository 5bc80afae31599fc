"""Foreshock models package."""
