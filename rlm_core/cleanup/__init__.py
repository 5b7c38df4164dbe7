"""Cleanup sweeps, one module per store, sharing a `Sweep` context."""
