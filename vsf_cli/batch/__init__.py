"""Batch rendering: job files (spec), their expansion into a deterministic job list (plan), and the runner."""
