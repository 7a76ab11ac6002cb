"""fl-agent's reference Flower app (Message API, PyTorch)."""
