"""Model-family adapters: which modules to patch, how to encode a negative, how tokens are laid out."""

from vsf_cli.errors import UsageError


def adapter_for(pipe):
    """The family adapter for a loaded diffusers pipeline, chosen by its class."""
    from vsf_cli.models.families import flux, sd3

    name = type(pipe).__name__
    for family in (sd3, flux):
        if name in family.PIPELINES:
            return family
    raise UsageError(f"{name} is not supported yet; supported: {', '.join(sd3.PIPELINES + flux.PIPELINES)}")
