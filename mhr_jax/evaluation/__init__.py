"""Evaluation: rank classification, greedy decoding, metrics, results tables."""
