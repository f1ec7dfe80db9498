"""Benchmarks: per-network latency and FLOPs (`python -m bench.networks`)."""
