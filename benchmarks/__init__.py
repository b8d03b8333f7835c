"""Benchmarks you run and report (`python -m benchmarks.speed`, `python benchmarks/batching.py`, ...); nothing in
the tests is timed."""
