"""Foreshock: edge predictive maintenance for rotating machinery.

This package holds the contracts every side agrees on (wire frames, topics, messages,
model bundles, config loading, errors) and the root CLI. See README.md.
"""

__version__ = "0.1.0"
