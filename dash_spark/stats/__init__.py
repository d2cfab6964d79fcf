"""Numerical kernels: additive statistics and per-variant finalisation (no pyspark here)."""
