"""Evaluation of batch outputs: eval items, judges (openai-compatible, exact toy), answer cache, statistics, reports."""
