"""Adapters that let other tools run adapt's methods (each imports its tool lazily: optional extras)."""
