"""Readers and writers of genotype, phenotype and covariate files (no pyspark here)."""
