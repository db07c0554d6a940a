"""Benchmarks (``make bench``): figures side by side with a baseline, measured in one run."""
