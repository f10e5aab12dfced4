"""Measuring: the build/apply/free protocol, timing, metrics, numerics and the ladder."""
