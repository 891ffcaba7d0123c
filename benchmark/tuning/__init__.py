"""Hyperparameter sweeps on validation splits carved from training data (never the test split)."""
