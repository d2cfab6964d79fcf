"""Benchmarks against plink2 and their cohorts."""
