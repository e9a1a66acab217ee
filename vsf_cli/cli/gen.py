"""`vsf gen`: resolve settings, load the model once, and write one PNG with metadata per seed."""

from pathlib import Path

import typer

from vsf_cli.cli import app
from vsf_cli.cli import generation as g
from vsf_cli.cli.common import errors_to_exit_codes
from vsf_cli.errors import UsageError

DEFAULT_OUTPUT = "out/{slug}_{seed}.png"


@app.command("gen")
def gen(
    prompt: str = typer.Argument(None, help="What to draw (optional with --from)."),
    neg: str = g.NEG,
    model: str = typer.Option(None, "--model", "-m", help="Alias (see `vsf models`), local diffusers folder or hub id. (default: sd35-large-turbo)"),
    method: str = g.METHOD,
    scale: float = g.SCALE,
    offset: float = g.OFFSET,
    compat: str = typer.Option(None, "--compat", help="paper (the paper's design) or reference (the seed code's layout, to match its numbers). (default: paper)"),
    nag_scale: float = g.NAG_SCALE,
    nag_tau: float = g.NAG_TAU,
    nag_alpha: float = g.NAG_ALPHA,
    nag_end: float = g.NAG_END,
    nasa_scale: float = g.NASA_SCALE,
    cfg_scale: float = g.CFG_SCALE,
    steps: int = g.STEPS,
    size: str = g.SIZE,
    guidance_scale: float = typer.Option(None, "--guidance-scale", help="The pipeline's guidance_scale, 0-30: CFG for SD3 (VSF needs <= 1), the distilled guidance for Flux dev. (model default)"),
    seed: list[int] = g.SEED,
    seeds: int = g.SEEDS,
    count: int = g.COUNT,
    image: Path = typer.Option(None, "--image", help="Edit this image (image-to-image) instead of starting from noise."),
    mask: Path = typer.Option(None, "--mask", help="Inpaint: repaint only where this mask is white (needs --image)."),
    strength: float = typer.Option(None, "--strength", help="With --image: how much is repainted, 0-1 (0 returns the input). (default: 0.6)"),
    output: str = typer.Option(DEFAULT_OUTPUT, "--output", "-o", help="Output template; fields {index} {seed} {slug} {model} {method}; must end in .png."),
    overwrite: bool = g.OVERWRITE,
    device: str = g.DEVICE,
    dtype: str = g.DTYPE,
    offload: str = g.OFFLOAD,
    lora: list[str] = g.LORA,
    offline: bool = g.OFFLINE,
    as_json: bool = g.AS_JSON,
    dry_run: bool = g.DRY_RUN,
    preset: str = g.PRESET,
    from_file: Path = g.FROM_FILE,
    quiet: bool = g.QUIET,
    verbose: bool = g.VERBOSE,
    debug: bool = g.DEBUG,
) -> None:
    """Generate images with a negative prompt that works at guidance scale 0."""
    with errors_to_exit_codes(debug):
        from vsf_cli.batch.spec import parse_size

        flags = {
            "prompt": prompt, "negative": neg, "model": model, "method": method, "scale": scale, "offset": offset,
            "compat": compat, "nag_scale": nag_scale, "nag_tau": nag_tau, "nag_alpha": nag_alpha, "nag_end": nag_end,
            "nasa_scale": nasa_scale, "cfg_scale": cfg_scale, "steps": steps, "guidance_scale": guidance_scale, "lora": lora or None,
            "device": device, "dtype": dtype, "offload": offload, **(parse_size(size) if size else {}), "strength": strength,
            "image": str(image) if image else None, "mask": str(mask) if mask else None,
        }
        if not prompt and not from_file:
            raise UsageError("missing PROMPT (or --from FILE)")

        def plan(settings: dict, seed_list: list[int]):
            return g.plan_paths(settings, seed_list, output, overwrite)

        g.run(flags, defaults={}, video=False, from_file=from_file, preset=preset, seed=seed, seeds=seeds, count=count, plan=plan,
              dry_run=dry_run, as_json=as_json, offline=offline, quiet=quiet, verbose=verbose)
