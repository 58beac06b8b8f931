"""Benchmarks: csa_jax against PyTorch on the same weights, and the machine description."""
