"""`vsf info`: print the generation settings stored in an image, video or JSON sidecar written by vsf (or A1111/Forge)."""

import json
from pathlib import Path

import typer

from vsf_cli.cli import app
from vsf_cli.cli.common import errors_to_exit_codes

# Shown first, in this order; any other keys follow alphabetically.
_ORDER = ("prompt", "negative", "model", "method", "scale", "offset", "compat", "steps", "guidance_scale",
          "seed", "width", "height", "sampler", "scheduler", "lora", "seconds", "version")


@app.command("info")
def info_command(
    file: Path = typer.Argument(..., help="A PNG, video (mp4, gif, webp, frames folder) or .json sidecar made by vsf, or an image with A1111 parameters."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Show the settings an image or video was made with."""
    with errors_to_exit_codes():
        from vsf_cli.render.metadata import read_metadata

        settings = read_metadata(file)
        if as_json:
            typer.echo(json.dumps(settings))
            return
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table("key", "value", show_header=False)
        keys = [k for k in _ORDER if k in settings] + sorted(k for k in settings if k not in _ORDER)
        for key in keys:
            if settings[key] is not None:
                # Text, not a str: prompts may contain "[...]" that rich would read as markup.
                table.add_row(Text(key), Text(_text(settings[key])))
        Console(highlight=False).print(table)


def _text(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "\n".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)
