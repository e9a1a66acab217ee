"""`vsf env`: versions, devices and hub settings to paste into bug reports (never a token's value)."""

import json
import os
import platform
from importlib import metadata

import typer
from rich.console import Console
from rich.table import Table

from vsf_cli import __version__
from vsf_cli.cli import app
from vsf_cli.cli.common import errors_to_exit_codes

_PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "peft", "huggingface_hub", "torchao", "optimum-quanto",
             "gguf", "bitsandbytes")  # the last four: --quantize


@app.command("env")
def env_command(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Show versions of Python, vsf and its libraries, the devices torch sees, and hub settings."""
    with errors_to_exit_codes():
        info = collect()
        if as_json:
            typer.echo(json.dumps(info))
            return
        table = Table("key", "value", show_header=False)
        for key, value in info.items():
            table.add_row(key, _text(value))
        Console(highlight=False).print(table)


def collect() -> dict:
    """Everything `vsf env` reports, as plain JSON-able values."""
    info: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "vsf": __version__,
    }
    for name in _PACKAGES:
        info[name] = _version(name)
    info.update(_devices())
    from huggingface_hub import constants

    info["hf_token_env"] = bool(os.environ.get("HF_TOKEN"))
    info["hf_token_saved"] = os.path.isfile(constants.HF_TOKEN_PATH)
    info["hf_hub_offline"] = constants.HF_HUB_OFFLINE
    info["hf_hub_cache"] = constants.HF_HUB_CACHE
    return info


def _version(dist: str) -> str | None:
    if dist == "torch":  # the distribution's version drops the build tag (+cpu, +cu130) that a bug report needs
        try:
            import torch
        except ImportError:
            return None
        return torch.__version__
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _devices() -> dict:
    try:
        import torch
    except ImportError:
        return {"cuda": False, "mps": False, "devices": []}
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    if mps:
        devices.append("mps")
    return {"torch_cuda": torch.version.cuda, "cuda": cuda, "mps": mps, "devices": devices}


def _text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(value) or "-"
    return str(value)
