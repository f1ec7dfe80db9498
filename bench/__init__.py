"""Benchmarks that print tables: per network (`python -m bench.networks`), the animation core per stage
(`python main.py bench`), the live loop (`python -m bench.live`) and the GPU
backends (`python -m bench.gpu`)."""
