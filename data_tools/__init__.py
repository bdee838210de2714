"""Offline data preparation: corpus -> cleaned, deduplicated, tokenized MMIDIDX shards with a manifest."""

__version__ = "0.1.0"
