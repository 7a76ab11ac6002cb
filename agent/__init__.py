"""fl-agent: boot agent that turns an OpenNebula VM into a Flower SuperNode."""

__version__ = "0.1.0"
