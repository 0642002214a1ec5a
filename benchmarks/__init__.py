"""Scripts that print the figures in BENCHMARKS.md; each runs as `python -m benchmarks.<name>`.

Kept import-free: the scripts set XLA flags before jax is first imported.
"""
