"""Benchmarks: `make bench` runs every `benchmarks/bench_*.py` module's `run()` and prints its results."""
