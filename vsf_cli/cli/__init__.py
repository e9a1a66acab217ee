"""The `vsf` Typer app: registers one module per command; imports no torch at start-up."""

import typer

from vsf_cli import __version__

app = typer.Typer(
    name="vsf",
    help="Negative prompts that work on few-step image and video models (Value Sign Flip, arXiv 2508.10931).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vsf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Negative prompts that work on few-step image and video models (Value Sign Flip)."""
    from vsf_cli.models.loading import quiet_imports

    quiet_imports()


from vsf_cli.cli import batch, bench, env, eval, gen, info, models, presets, report, ui, video  # noqa: E402  (each registers its command on `app`)

__all__ = ["app", "main", "batch", "bench", "env", "eval", "gen", "info", "models", "presets", "report", "ui", "video"]


def main() -> None:
    app()
