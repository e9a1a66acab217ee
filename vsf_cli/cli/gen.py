"""`vsf gen`: resolve settings, load the model once, and write one PNG with metadata per seed."""

import json
import secrets
import time
from pathlib import Path

import typer

from vsf_cli.cli import app
from vsf_cli.cli.common import console, errors_to_exit_codes, warn
from vsf_cli.errors import UsageError

DEFAULT_OUTPUT = "out/{slug}_{seed}.png"


@app.command("gen")
def gen(
    prompt: str = typer.Argument(None, help="What to draw (optional with --from)."),
    neg: str = typer.Option(None, "--neg", help="What to keep out of the image: the negative prompt."),
    model: str = typer.Option(None, "--model", "-m", help="Alias (see `vsf models`), local diffusers folder or hub id. (default: sd35-large-turbo)"),
    method: str = typer.Option(None, "--method", help="Guidance: vsf, nag, nasa, cfg, or none (positive only). (default: vsf with --neg, else none)"),
    scale: float = typer.Option(None, "--scale", help="VSF flip scale alpha, 0-20; higher pushes harder away from --neg. (model default: 3.5)"),
    offset: float = typer.Option(None, "--offset", help="VSF logit offset beta, -5 to inf; higher damps the negative. (model default: 0.1)"),
    compat: str = typer.Option(None, "--compat", help="paper (the paper's design) or reference (the seed code's layout, to match its numbers). (default: paper)"),
    nag_scale: float = typer.Option(None, "--nag-scale", help="NAG extrapolation s, 1-20; 1 = off. (default: 4)"),
    nag_tau: float = typer.Option(None, "--nag-tau", help="NAG cap on the guided/positive L1-norm ratio, 1-20. (default: 2.5)"),
    nag_alpha: float = typer.Option(None, "--nag-alpha", help="NAG blend of guided into positive attention, 0-1. (default: 0.125)"),
    nag_end: float = typer.Option(None, "--nag-end", help="NAG: fraction of the denoising it is active, 0-1. (default: 1)"),
    nasa_scale: float = typer.Option(None, "--nasa-scale", help="NASA subtraction scale s, 0-5; 0 = off. (default: 0.22)"),
    cfg_scale: float = typer.Option(None, "--cfg-scale", help="CFG guidance scale, >1 to 30 (two passes per step). (default: 4.5)"),
    steps: int = typer.Option(None, "--steps", help="Denoising steps, 1-200. (model default: 8 for SD3.5 Turbo)"),
    size: str = typer.Option(None, "--size", help="WIDTHxHEIGHT, or one number for a square; multiples of 16. (model default: 1024x1024)"),
    guidance_scale: float = typer.Option(None, "--guidance-scale", help="The pipeline's guidance_scale: CFG for SD3 (VSF needs <= 1), the distilled guidance for Flux dev. (model default)"),
    seed: list[int] = typer.Option(None, "--seed", help="Seed, 0 to 2^63-1; repeat for several images. (default: random, printed)"),
    seeds: int = typer.Option(None, "--seeds", help="Render N images with random seeds."),
    count: int = typer.Option(None, "-n", help="Images to render: seeds S..S+N-1 after one --seed S, else N random seeds. (default: 1)"),
    image: Path = typer.Option(None, "--image", help="Edit this image (image-to-image) instead of starting from noise."),
    mask: Path = typer.Option(None, "--mask", help="Inpaint: repaint only where this mask is white (needs --image)."),
    strength: float = typer.Option(None, "--strength", help="With --image: how much is repainted, 0-1 (0 returns the input). (default: 0.6)"),
    output: str = typer.Option(DEFAULT_OUTPUT, "--output", "-o", help="Output template; fields {index} {seed} {slug} {model} {method}; must end in .png."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files instead of refusing."),
    device: str = typer.Option(None, "--device", help="cuda, cuda:1, mps or cpu. (default: auto)"),
    dtype: str = typer.Option(None, "--dtype", help="float16, bfloat16 or float32. (default: auto: bfloat16 on GPU, float32 on CPU)"),
    offload: str = typer.Option(None, "--offload", help="none, model (whole models move to the GPU in turn) or sequential (layer by layer, least memory). (default: none)"),
    lora: list[str] = typer.Option(None, "--lora", help="LoRA as PATH_OR_HUB_ID[:SCALE], repeatable; safetensors only. (scale default: 1.0)"),
    offline: bool = typer.Option(False, "--offline", help="Use only the local hub cache; never touch the network."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per image on stdout instead of its path."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved settings and output paths; load nothing."),
    preset: str = typer.Option(None, "--preset", help="Start from a preset's defaults, e.g. anti-aesthetic (see `vsf presets`); flags win."),
    from_file: Path = typer.Option(None, "--from", help="Replay the settings stored in a PNG or .json made by vsf; flags given here win."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or status on stderr; errors only."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print the resolved settings and timings on stderr."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
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
        settings = resolve_settings(flags, from_file, preset)
        stored_seed = settings.pop("seed")  # from --from; explicit seeds and --seeds win
        explicit_seeds = list(seed or ([] if stored_seed is None or seeds else [stored_seed]))
        seed_list = _seeds(explicit_seeds, seeds, count)
        jobs = _plan(settings, seed_list, output, overwrite)
        if dry_run:
            for path, s in jobs:
                typer.echo(json.dumps({"path": str(path), **s}) if as_json else f"{path}\t{json.dumps(s)}")
            return
        _render(jobs, offline=offline, as_json=as_json, quiet=quiet, verbose=verbose)


def resolve_settings(flags: dict, from_file: Path | None, preset: str | None = None) -> dict:
    """Merge model defaults < preset < --from file < VSF_* env < flags, and validate (no model load)."""
    from vsf_cli.batch.plan import fill_negative
    from vsf_cli.batch.spec import preset_defaults
    from vsf_cli.render.metadata import read_metadata
    from vsf_cli.settings import env_layer, resolve, stored

    replay = stored(read_metadata(from_file)) if from_file else {}
    layers = [preset_defaults(preset), replay, env_layer(), flags]
    settings = resolve(*layers, warn=warn)
    settings["negative"] = fill_negative(settings["negative"], settings["prompt"])
    return settings


def _seeds(explicit: list[int], random_count: int | None, count: int | None) -> list[int]:
    for name, value in (("--seeds", random_count), ("-n", count)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1")
    if random_count and explicit:
        raise UsageError("use either --seed or --seeds, not both")
    if explicit and count:
        if len(explicit) > 1:
            raise UsageError("-n takes one --seed S (giving S..S+N-1), not several")
        return [explicit[0] + i for i in range(count)]
    if explicit:
        return list(explicit)
    return [secrets.randbelow(2**32) for _ in range(random_count or count or 1)]


def _plan(settings: dict, seed_list: list[int], template: str, overwrite: bool) -> list[tuple[Path, dict]]:
    """Each image's settings and output path, checked for collisions and existing files before any load."""
    from vsf_cli.render.naming import check_free, expand, slugify

    if not template.lower().endswith(".png"):
        raise UsageError(f"--output {template!r} must end in .png")
    model_name = Path(settings["model"]).name if Path(settings["model"]).is_dir() else settings["model"]
    jobs = []
    for index, seed in enumerate(seed_list):
        s = {**settings, "seed": seed}
        fields = {"index": index, "seed": seed, "slug": slugify(s["prompt"]), "model": model_name, "method": s["method"]}
        jobs.append((expand(template, fields, allow_parent=True), s))
    check_free([p for p, _ in jobs], overwrite)
    return jobs


def _render(jobs: list[tuple[Path, dict]], *, offline: bool, as_json: bool, quiet: bool, verbose: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vsf_cli.generate import Renderer

    first = jobs[0][1]
    if verbose:
        console.print(json.dumps({k: v for k, v in first.items() if k != "seed"}))
    if not quiet:
        console.print(f"loading {first['model']}")
    started = time.perf_counter()
    renderer = Renderer(first, offline=offline)
    if verbose:
        console.print(f"loaded in {time.perf_counter() - started:.1f}s on {renderer.resolved['device']} "
                      f"({renderer.resolved['dtype']})")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True, disable=quiet or not console.is_terminal)
    with progress:
        for path, s in jobs:
            task = progress.add_task(f"seed {s['seed']}", total=s["steps"])
            record = renderer.render(s, path, on_step=lambda task=task: progress.advance(task))
            progress.remove_task(task)
            typer.echo(json.dumps({"path": str(path), **record}) if as_json else str(path))
            if not quiet:
                console.print(f"wrote {path} (seed {s['seed']}, {record['seconds']:.1f}s)")
