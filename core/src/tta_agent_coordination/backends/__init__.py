"""Drivers shipped with the core: the in-memory default."""
