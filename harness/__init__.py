"""harness: a plugin-based benchmarking harness for training image classifiers (README.md)."""

__version__ = "0.1.0"
