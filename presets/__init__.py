"""Presets shipped as package data (installed as `vsf_cli.presets`): job files with documented defaults."""
