"""Prefix-RFT (arXiv 2507.01679) for verl 0.9.1."""

__version__ = "0.1.0"
