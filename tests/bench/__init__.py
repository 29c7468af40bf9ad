"""Benchmarks: programs run by `make bench`, not tests (pytest does not collect this folder)."""
