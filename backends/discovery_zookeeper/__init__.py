"""Placeholder; the adapter lands with its own issue."""
