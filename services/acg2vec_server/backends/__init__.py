"""Adapters to the backends. Each kind has one small interface and an embedded default."""
