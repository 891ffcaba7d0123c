"""Dataset code: protocol cards, on-disk parsers, the synthetic generator, the unlabeled view."""
