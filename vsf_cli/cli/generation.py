"""What `gen` and `video` share: the common options, settings resolution, seeds, output plans and the render loop."""

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import typer

from vsf_cli.cli.common import console, progress_bar, warn
from vsf_cli.errors import UsageError

# Options both commands take; each is declared once so the two help screens cannot drift apart. The generation flags
# that `vsf batch` takes too (--neg, --method, the method knobs, --steps, ...) are built in vsf_cli.cli.options.
SEED = typer.Option(None, "--seed", help="Seed, 0 to 2^63-1; repeat for several outputs. (default: random, printed)")
SEEDS = typer.Option(None, "--seeds", help="Render N outputs with random seeds.")
COUNT = typer.Option(None, "-n", help="Outputs to render: seeds S..S+N-1 after one --seed S, else N random seeds. (default: 1)")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing files instead of refusing.")
OFFLINE = typer.Option(False, "--offline", help="Use only the local hub cache; never touch the network.")
AS_JSON = typer.Option(False, "--json", help="Print one JSON object per output on stdout instead of its path.")
DRY_RUN = typer.Option(False, "--dry-run", help="Print the resolved settings and output paths; load nothing.")
PRESET = typer.Option(None, "--preset", help="Start from a preset's defaults, e.g. anti-aesthetic (see `vsf presets`); flags win.")
FROM_FILE = typer.Option(None, "--from", help="Replay the settings stored in a file made by vsf (PNG, video or .json); flags given here win.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress or status on stderr; errors only.")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Also print the resolved settings and timings on stderr.")
DEBUG = typer.Option(False, "--debug", help="Show the full traceback on errors.")


def run(flags: dict, *, defaults: dict, video: bool, from_file: Path | None, preset: str | None, seed: list[int] | None, seeds: int | None,
        count: int | None, plan, dry_run: bool, as_json: bool, offline: bool, quiet: bool, verbose: bool) -> None:
    """Resolve settings over the command's `defaults` and pick seeds, plan every output path
    (`plan(settings, seeds)`), then render or dry-run."""
    settings = resolve_settings(flags, from_file, preset, defaults, video=video)
    stored_seed = settings.pop("seed")  # from --from; explicit seeds and --seeds win
    explicit_seeds = list(seed or ([] if stored_seed is None or seeds else [stored_seed]))
    jobs = plan(settings, pick_seeds(explicit_seeds, seeds, count))
    if dry_run:
        for path, s in jobs:
            typer.echo(json.dumps({"path": str(path), **s}) if as_json else f"{path}\t{json.dumps(s)}")
        return
    _render(jobs, offline=offline, as_json=as_json, quiet=quiet, verbose=verbose)


def resolve_settings(flags: dict, from_file: Path | None, preset: str | None = None, defaults: dict | None = None,
                     video: bool | None = None, warn: Callable[[str], None] = warn) -> dict:
    """Merge model defaults < command defaults < preset < --from file < VSF_* env < flags; validate (no model load).

    `warn` gets the warnings (stderr by default; the ui page shows them)."""
    from vsf_cli.batch.plan import fill_negative
    from vsf_cli.batch.spec import preset_defaults
    from vsf_cli.render.metadata import read_metadata
    from vsf_cli.settings import env_layer, resolve, stored

    replay = stored(read_metadata(from_file)) if from_file else {}
    layers = [defaults or {}, preset_defaults(preset), replay, env_layer(), flags]
    settings = resolve(*layers, warn=warn, video=video)
    settings["negative"] = fill_negative(settings["negative"], settings["prompt"])
    warn_ignored(flags, settings["method"], warn)
    return settings


def warn_ignored(flags: dict, method: str, warn: Callable[[str], None] = warn) -> None:
    """One warning for method knobs given as flags that the chosen method does not take (they would do nothing)."""
    from vsf_cli import guidance
    from vsf_cli.cli.options import flag
    from vsf_cli.settings import METHOD_SETTINGS

    taken = guidance.parameters(method)
    ignored = [flag(k) for k in METHOD_SETTINGS if flags.get(k) is not None and k not in taken]
    if ignored:
        takes = ", ".join(flag(k) for k in taken) or "no knobs"
        warn(f"{' and '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} nothing with --method {method} "
             f"(it takes {takes})")


def pick_seeds(explicit: list[int], random_count: int | None, count: int | None) -> list[int]:
    """The seeds of --seed, --seeds and -n, checked as `gen` checks them (the ui page takes the same)."""
    for name, value in (("--seeds", random_count), ("-n", count)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1")
    if random_count and explicit:
        raise UsageError("use either --seed or --seeds, not both")
    from vsf_cli.settings import SEED_MAX

    for s in explicit:
        if not 0 <= s <= SEED_MAX:
            raise UsageError(f"--seed {s} is out of range; seeds are 0 to {SEED_MAX} (2^63-1)")
    if explicit and count:
        if len(explicit) > 1:
            raise UsageError("-n takes one --seed S (giving S..S+N-1), not several")
        if explicit[0] + count - 1 > SEED_MAX:
            raise UsageError(f"-n {count} after --seed {explicit[0]} goes past the largest seed, {SEED_MAX}")
        return [explicit[0] + i for i in range(count)]
    if explicit:
        return list(explicit)
    return [secrets.randbelow(2**32) for _ in range(random_count or count or 1)]


def plan_paths(settings: dict, seed_list: list[int], template: str, overwrite: bool, suffix: str = ".png",
               also: Callable[[Path], list[Path]] = lambda path: []) -> list[tuple[Path, dict]]:
    """Each output's settings and path, checked for collisions and existing files before any load.

    `suffix` is the extension the template must end in; "" means any, cut off to name a folder (video frames).
    `also(path)` names files written next to each output (a video's sidecar), which must be free as well.
    """
    from vsf_cli.render.naming import check_free, check_writable, expand, slugify

    if suffix and not template.lower().endswith(suffix):
        raise UsageError(f"--output {template!r} must end in {suffix}")
    model_name = Path(settings["model"]).name if Path(settings["model"]).is_dir() else settings["model"]
    jobs = []
    for index, seed in enumerate(seed_list):
        s = {**settings, "seed": seed}
        fields = {"index": index, "seed": seed, "slug": slugify(s["prompt"]), "model": model_name, "method": s["method"]}
        path = expand(template, fields, allow_parent=True)
        jobs.append((path if suffix else path.with_suffix(""), s))
    check_free([p for p, _ in jobs] + [extra for p, _ in jobs for extra in also(p)], overwrite, folders=not suffix)
    check_writable([p for p, _ in jobs])
    return jobs


def _render(jobs: list[tuple[Path, dict]], *, offline: bool, as_json: bool, quiet: bool, verbose: bool) -> None:
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
    progress = progress_bar(quiet, eta=False)
    with progress:
        for path, s in jobs:
            task = progress.add_task(f"seed {s['seed']}", total=s["steps"])
            record = renderer.render(s, path, on_step=lambda task=task: progress.advance(task))
            progress.remove_task(task)
            if not quiet:
                console.print(f"wrote {path} (seed {s['seed']}, {record['seconds']:.1f}s)")
            typer.echo(json.dumps({"path": str(path), **record}) if as_json else str(path))
