"""Benchmark harnesses run by ``python -m experiments.benchmark`` (outside the library)."""
