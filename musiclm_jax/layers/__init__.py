"""Reusable Flax building blocks with logical axis names (shared by every model)."""
