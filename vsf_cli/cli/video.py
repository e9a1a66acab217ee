"""`vsf video`: Wan 2.1 and 2.2 video with a working negative prompt, written as mp4 (or GIF, WebP, PNG frames)."""

from pathlib import Path

import typer

from vsf_cli.cli import app
from vsf_cli.cli import generation as g
from vsf_cli.cli import options as o
from vsf_cli.cli.common import errors_to_exit_codes
from vsf_cli.errors import UsageError

DEFAULT_OUTPUT = "out/{slug}_{seed}.mp4"
DEFAULT_MODEL = "wan-1.3b"
EXCLUDED = ("compat",)  # Wan has one stream layout: --compat changes nothing (the ui page hides it too)


@app.command("video")
@o.add_flags(DEFAULT_MODEL, after="model", exclude=EXCLUDED)
def video(
    prompt: str = typer.Argument(None, help="What to film (optional with --from)."),
    model: str = typer.Option(None, "--model", "-m", help=f"wan (= wan-1.3b), wan-14b, wan-i2v-14b (with --image), wan22-t2v-a14b, wan22-i2v-a14b (with --image), wan22-ti2v-5b (--image optional), a local Wan folder or hub id. (default: {DEFAULT_MODEL})"),
    frames: int = typer.Option(None, "--frames", help="Frames to generate, 4k+1 (Wan's VAE packs 4 per latent), 1-1001; beyond the model's default it drifts. (model default: 81; 121 for wan22-ti2v-5b)"),
    fps: int = typer.Option(None, "--fps", help="Playback frames per second, 1-240. (model default: 16; 24 for wan22-ti2v-5b)"),
    trim_start: int = typer.Option(None, "--trim-start", help="Drop this many frames from the start; CausVid's first frames flash. (model default: 5 for wan-1.3b, 0 for the others)"),
    seed: list[int] = g.SEED,
    seeds: int = g.SEEDS,
    count: int = g.COUNT,
    output_format: str = typer.Option("mp4", "--format", help="mp4 (H.264), gif, webp, or frames (a folder of PNGs). (default: mp4)"),
    output: str = typer.Option(DEFAULT_OUTPUT, "--output", "-o", help="Output template; fields {index} {seed} {slug} {model} {method}; its extension follows --format."),
    image: Path = typer.Option(None, "--image", help="Image-to-video: the first frame (wan-i2v-14b, wan22-i2v-a14b, wan22-ti2v-5b); the size follows its aspect ratio."),
    vae_tiling: bool = typer.Option(None, "--vae-tiling/--no-vae-tiling", help="Decode the video in tiles: less memory, faint seams. (default: off)"),
    overwrite: bool = g.OVERWRITE,
    default_lora: bool = typer.Option(True, "--default-lora/--no-default-lora", help="Load the model's distill LoRAs from `vsf models` (Wan 2.2 A14B: one per expert; --lora adds more). (default: on)"),
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
    """Generate videos with a negative prompt that works without CFG (Wan 2.1 and 2.2 + distill LoRAs)."""
    with errors_to_exit_codes(debug):
        from vsf_cli.render.video import output_path, sidecar

        if not prompt and not from_file:
            raise UsageError("missing PROMPT (or --from FILE)")
        flags = {"prompt": prompt, "model": model, **o.to_settings(options), "frames": frames, "fps": fps,
                 "trim_start": trim_start, "vae_tiling": vae_tiling, "default_lora": None if default_lora else False,
                 "image": str(image) if image else None}

        def plan(settings: dict, seed_list: list[int]):
            template = str(output_path(Path(output), output_format)) if output == DEFAULT_OUTPUT else output
            suffix = output_path(Path("x.mp4"), output_format).suffix
            return g.plan_paths(settings, seed_list, template, overwrite, suffix, also=lambda path: [sidecar(path)])

        g.run(flags, defaults={"model": DEFAULT_MODEL}, video=True, from_file=from_file, preset=preset, seed=seed, seeds=seeds, count=count, plan=plan,
              dry_run=dry_run, as_json=as_json, offline=offline, quiet=quiet, verbose=verbose)
