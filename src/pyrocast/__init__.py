"""Pyrocast."""
