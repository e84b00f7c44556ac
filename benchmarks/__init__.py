"""Benchmarks and evaluations (run as modules: ``python -m benchmarks.<name>``)."""
