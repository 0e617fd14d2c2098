"""Benchmark scripts (importable as ``benchmarks.<name>`` from the repository root)."""
