"""Foreshock agent package."""
