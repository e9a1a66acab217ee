"""`vsf gen`: resolve settings, load the model once, and write one PNG with metadata per seed."""

from pathlib import Path

import typer

from vsf_cli.cli import app
from vsf_cli.cli import generation as g
from vsf_cli.cli import options as o
from vsf_cli.cli.common import errors_to_exit_codes
from vsf_cli.errors import UsageError
from vsf_cli.models.registry import DEFAULT_MODEL

DEFAULT_OUTPUT = "out/{slug}_{seed}.png"


@app.command("gen")
@o.add_flags(DEFAULT_MODEL, after="model")
def gen(
    prompt: str = typer.Argument(None, help="What to draw (optional with --from)."),
    model: str = typer.Option(None, "--model", "-m", help=f"Alias (see `vsf models`), local diffusers folder or hub id. (default: {DEFAULT_MODEL})"),
    seed: list[int] = g.SEED,
    seeds: int = g.SEEDS,
    count: int = g.COUNT,
    image: Path = typer.Option(None, "--image", help="Edit this image (image-to-image) instead of starting from noise."),
    mask: Path = typer.Option(None, "--mask", help="Inpaint: repaint only where this mask is white (needs --image)."),
    strength: float = typer.Option(None, "--strength", help="With --image: how much is repainted, 0-1 (0 returns the input). (default: 0.6)"),
    output: str = typer.Option(DEFAULT_OUTPUT, "--output", "-o", help="Output template; fields {index} {seed} {slug} {model} {method}; must end in .png."),
    overwrite: bool = g.OVERWRITE,
    offline: bool = g.OFFLINE,
    as_json: bool = g.AS_JSON,
    dry_run: bool = g.DRY_RUN,
    preset: str = g.PRESET,
    from_file: Path = g.FROM_FILE,
    quiet: bool = g.QUIET,
    verbose: bool = g.VERBOSE,
    debug: bool = g.DEBUG,
    **options,  # the shared generation flags (vsf_cli.cli.options): --neg, --method, the method knobs, --steps, ...
) -> None:
    """Generate images with a negative prompt that works at guidance scale 0."""
    with errors_to_exit_codes(debug):
        flags = {"prompt": prompt, "model": model, **o.to_settings(options), "strength": strength,
                 "image": str(image) if image else None, "mask": str(mask) if mask else None}
        if not prompt and not from_file:
            raise UsageError("missing PROMPT (or --from FILE)")

        def plan(settings: dict, seed_list: list[int]):
            return g.plan_paths(settings, seed_list, output, overwrite)

        g.run(flags, defaults={}, video=False, from_file=from_file, preset=preset, seed=seed, seeds=seeds, count=count, plan=plan,
              dry_run=dry_run, as_json=as_json, offline=offline, quiet=quiet, verbose=verbose)
