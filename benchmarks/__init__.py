"""Benchmarks: each a script (`python benchmarks/NAME.py`), its figures printed."""
