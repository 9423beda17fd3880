"""Benchmarks of rtops services against reference implementations (see bench/README.md)."""
