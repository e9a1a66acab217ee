"""`vsf models`: print the registry (one table of defaults) with whether each model is in the local hub cache."""

import json

import typer
from rich.console import Console
from rich.table import Table

from vsf_cli.cli import app
from vsf_cli.cli.common import errors_to_exit_codes


@app.command("models")
def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per model (JSON Lines)."),
) -> None:
    """List model aliases, their hub ids and default settings."""
    with errors_to_exit_codes():
        from vsf_cli.models.loading import is_cached
        from vsf_cli.models.registry import DEFAULT_MODEL, MODELS

        # A model shipped in the package counts as cached: it needs no download.
        rows = [{**spec.to_dict(), "cached": bool(spec.folder) or bool(spec.hub_id and is_cached(spec.hub_id)),
                 "default": alias == DEFAULT_MODEL} for alias, spec in MODELS.items()]
        if as_json:
            for row in rows:
                typer.echo(json.dumps(row))
            return
        table = Table("alias", "family", "hub id", "gated", "cached", "steps", "size", "scale", "offset",
                      caption=f"* default model ({DEFAULT_MODEL})")
        table.columns[2].overflow = "fold"  # a hub id is data: wrap it, never cut it with an ellipsis
        for row in rows:
            alias = row["alias"] + ("*" if row["default"] else "")
            table.add_row(
                alias, row["family"], row["hub_id"] or ("(shipped)" if row["folder"] else "-"), _yes(row["gated"]), _yes(row["cached"]),
                str(row["steps"]), f"{row['width']}x{row['height']}", f"{row['scale']:g}", f"{row['offset']:g}",
            )
        # stdout carries data; when piped, rich would assume 80 columns and wrap every row.
        Console(highlight=False, width=max(160, Console().width)).print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
