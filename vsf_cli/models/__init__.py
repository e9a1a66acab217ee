"""Models: the one table of per-model defaults (registry) and pipeline loading from the hub or local folders."""
