"""Benchmarks (scripts, not timed tests) and the helpers the fault tests share with them."""
