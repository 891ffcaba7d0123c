"""Reproducibility harness for unsupervised person re-ID and unsupervised image clustering."""

__version__ = "0.1.0"
