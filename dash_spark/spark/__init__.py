"""Spark wiring: sessions, partitions, broadcasts and result schemas."""
