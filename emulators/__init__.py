"""Emulators of the services the agent talks to, for tests, benchmarks and the demo.

Outside the `agent` package on purpose: `pip wheel .` ships none of this (pyproject.toml finds
`agent*` only), and nothing here imports the agent, so the two sides share no parser.
"""
