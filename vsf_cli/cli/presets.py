"""`vsf presets` lists the shipped presets; `vsf presets show NAME` prints one."""

import typer

from vsf_cli.cli import app
from vsf_cli.cli.common import errors_to_exit_codes

presets_app = typer.Typer(help="List the shipped presets, or print one with `vsf presets show NAME`.")
app.add_typer(presets_app, name="presets")


@presets_app.callback(invoke_without_command=True)
def list_presets(ctx: typer.Context) -> None:
    """List presets: name and one-line description."""
    if ctx.invoked_subcommand:
        return
    with errors_to_exit_codes():
        from vsf_cli.batch.spec import load, preset_names, preset_path

        for name in preset_names():
            spec = load(preset_path(name))
            typer.echo(f"{name}\t{len(spec.jobs)} jobs\t{spec.description}")


@presets_app.command("show")
def show(name: str = typer.Argument(..., help="Preset name, as listed by `vsf presets`.")) -> None:
    """Print a preset file: its origin, knobs and example jobs."""
    with errors_to_exit_codes():
        from vsf_cli.batch.spec import preset_path

        typer.echo(preset_path(name).read_text(encoding="utf-8"), nl=False)
