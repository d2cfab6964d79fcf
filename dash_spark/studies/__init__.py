"""Stores and refreshes, forward selection, multi-party studies."""
