"""forgetless: measure and prevent catastrophic forgetting in PyTorch models."""

__version__ = "0.1.0"
