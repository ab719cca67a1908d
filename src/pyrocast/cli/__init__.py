"""The `pyrocast` command: a thin layer over the library."""
