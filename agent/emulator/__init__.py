"""Emulators of the services the agent talks to, for tests and the demo (no real cloud here)."""
