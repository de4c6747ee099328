"""Open-set indexing (paper section 5): identifiers for images added after training, without retraining."""
