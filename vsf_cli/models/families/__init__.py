"""Model-family adapters: which modules to patch, how to encode a negative, how tokens are laid out."""

import importlib

from vsf_cli.errors import UsageError


def family_of(pipe) -> str:
    """The family name of a loaded diffusers pipeline, from its class (see registry.PIPELINES)."""
    from vsf_cli.models.registry import PIPELINE_CLASS_FAMILY

    name = type(pipe).__name__
    if name not in PIPELINE_CLASS_FAMILY:
        raise UsageError(f"{name} is not supported yet; supported: {', '.join(PIPELINE_CLASS_FAMILY)}")
    return PIPELINE_CLASS_FAMILY[name]


def adapter_for(pipe):
    """The family adapter module for a loaded diffusers pipeline."""
    return importlib.import_module(f"vsf_cli.models.families.{family_of(pipe)}")
