"""Foreshock firmware_sim package."""
