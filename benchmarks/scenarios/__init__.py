"""The benchmark scenarios: one file each, run in their ``ORDER`` by ``benchmarks/run.py``."""
