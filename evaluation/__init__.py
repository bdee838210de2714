"""Evaluation of trained models: loading checkpoints, export to transformers, generation, perplexity."""
