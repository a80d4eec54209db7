"""Benchmarks: speed and quality, each writing benchmarks/results/*.json with its machine."""
