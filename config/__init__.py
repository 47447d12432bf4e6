"""Herd topologies (TOML) and their loader/validator."""
