"""visbench: controlled experiments on whether vision needs Mamba."""

__version__ = "0.1.0"
