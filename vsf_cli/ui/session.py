"""The ui page's work without the page: resolve a comparison as `vsf gen` would, render it on one loaded model
behind a lock, save chosen rows without replacing files, and write the `vsf gen` line that makes each row."""

import itertools
import os
import re
import secrets
import shlex
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vsf_cli.errors import UsageError

MAX_SEEDS = 8  # columns of the grid
MAX_SWEEP = 8  # rows of the method
# How `vsf ui` loads the model; the page cannot change them.
LOAD_FLAGS = ("device", "dtype", "offload", "quantize", "compile")


@dataclass
class Request:
    """What the page sends; None or "" means "not set" (the model's default), as for an absent flag."""

    prompt: str
    negative: str | None  # one negative per line; several lines are several negatives (a repeated --neg)
    model: str
    method: str = "vsf"
    knobs: dict = field(default_factory=dict)  # method parameters by name; those the method does not take are dropped
    seeds: str = "0"  # "0 1 2 3" or "0, 1"
    steps: int | None = None
    size: str | None = None  # WIDTHxHEIGHT or one number
    frames: int | None = None  # video models only
    sweep: str = ""  # values of the method's first knob (VSF: scale, the α), one row each


@dataclass
class Row:
    """One row of the grid: one setting, one output per seed."""

    label: str
    settings: list[dict]  # one per seed, resolved exactly as `vsf gen` resolves them
    paths: list[Path] = field(default_factory=list)  # the rendered files, in seed order


@dataclass
class Comparison:
    """The grid: the `none` row first, then the method's rows, the same seeds in each."""

    seeds: list[int]
    rows: list[Row]

    @property
    def steps(self) -> int:
        """Denoising steps the whole grid takes, for the progress bar."""
        return sum(s["steps"] for row in self.rows for s in row.settings)


def parse_numbers(text: str, kind: type, what: str) -> list:
    """'0 1, 2' -> [0, 1, 2]; a word that is not a number is refused naming it."""
    values = []
    for word in re.split(r"[\s,]+", text.strip()):
        if word:
            try:
                values.append(kind(word))
            except ValueError:
                raise UsageError(f"{what}: {word!r} is not a{'n integer' if kind is int else ' number'}") from None
    return values


def plan(request: Request, warn: Callable[[str], None] = lambda message: None, load: dict | None = None) -> Comparison:
    """Every row's settings, validated by the same resolution as `vsf gen` (no model load); `load` holds the
    LOAD_FLAGS given to `vsf ui` (None: not given)."""
    from vsf_cli import guidance
    from vsf_cli.cli.generation import pick_seeds, resolve_settings
    from vsf_cli.cli.options import to_settings

    if request.method == "none":
        raise UsageError("choose a method to compare with none")
    seeds = pick_seeds(parse_numbers(request.seeds, int, "seeds"), None, None)
    sweep = parse_numbers(request.sweep, float, "sweep")
    if len(seeds) > MAX_SEEDS or len(sweep) > MAX_SWEEP:
        raise UsageError(f"at most {MAX_SEEDS} seeds and {MAX_SWEEP} sweep values")
    base = {"prompt": request.prompt, "model": request.model,
            **to_settings({"neg": _negatives(request.negative), "size": request.size or None, "steps": request.steps}),
            "frames": request.frames, **(load or {})}
    taken = guidance.parameters(request.method)
    knobs = {k: v for k, v in request.knobs.items() if k in taken and v is not None}
    main = taken[0] if taken else None
    settings = [("none", {**base, "method": "none"})]
    for value in sweep or [None]:
        row = {**knobs, **({main: value} if value is not None else {})}
        settings.append((None, {**base, "method": request.method, **row}))
    rows = []
    for label, flags in settings:
        resolved = resolve_settings(flags, None, warn=warn)
        resolved.pop("seed")
        if label is None:
            label = f"{request.method} {main} {resolved[main]:g}" if main else request.method
        rows.append(Row(label, [{**resolved, "seed": seed} for seed in seeds]))
    return Comparison(seeds, rows)


def _negatives(text: str | None) -> list[str]:
    """The box's lines as repeated --neg values; a box of blanks stays one blank, refused as `--neg " "` is."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines or ([text] if text else [])


class Session:
    """One loaded model behind a lock: requests render one at a time into a temp folder that the page serves."""

    def __init__(self, model: str, *, offline: bool = False, load: dict | None = None) -> None:
        from vsf_cli.cli.generation import resolve_settings

        self.offline = offline
        self.load = load or {}
        self.lock = threading.Lock()
        self._temp = tempfile.TemporaryDirectory(prefix="vsf-ui-")  # removed when the session goes
        self.folder = Path(self._temp.name)
        self._requests = itertools.count()
        self.renderer = None
        self._load(resolve_settings({"prompt": "-", "model": model, **self.load}, None))

    def plan(self, request: Request, warn: Callable[[str], None] = lambda message: None) -> Comparison:
        """`plan` with this session's load flags."""
        return plan(request, warn, self.load)

    def _load(self, settings: dict) -> None:
        """Keep the loaded model if `settings` can use it; else drop it and load theirs."""
        from vsf_cli.generate import LOAD_KEYS, Renderer

        if self.renderer and all(self.renderer.load_settings[k] == settings[k] for k in LOAD_KEYS):
            return
        self.renderer = None  # free the old weights before the new ones load
        self.renderer = Renderer(settings, offline=self.offline)

    def render(self, comparison: Comparison, on_step: Callable[[], None] = lambda: None) -> Comparison:
        """Render every row of `comparison` (after any request already rendering); fills in each row's paths."""
        with self.lock:
            self._load(comparison.rows[0].settings[0])
            folder = self.folder / f"{next(self._requests):05d}"
            suffix = ".mp4" if self.renderer.family.video else ".png"
            for index, row in enumerate(comparison.rows):
                row.paths = []  # a comparison rendered again shows its new files
                for settings in row.settings:
                    path = folder / f"{index}_{settings['seed']}{suffix}"
                    self.renderer.render(settings, path, on_step)
                    row.paths.append(path)
        return comparison


def save(comparison: Comparison, chosen: list[int], folder: Path) -> tuple[list[Path], list[str]]:
    """Copy the chosen rows' files (PNG, or video and its sidecar) into `folder` under new names, and the `vsf gen`
    (or `vsf video`) line for each row; returns (paths written, command lines)."""
    from vsf_cli.render.naming import slugify
    from vsf_cli.render.video import sidecar

    written, commands = [], []
    for index in chosen:
        row = comparison.rows[index]
        if not row.paths:
            raise UsageError("nothing rendered to save yet")
        for settings, path in zip(row.settings, row.paths):
            stem = f"{slugify(settings['prompt'])}_{settings['seed']}_{slugify(row.label)}"
            extra = [sidecar(path)] if sidecar(path).exists() else []
            written.append(copy_new([path, *extra], Path(folder), stem)[0])
        commands.append(command_line(row.settings[0], comparison.seeds, f"{slugify(row.label)}{path.suffix}"))
    return written, commands


def copy_new(sources: list[Path], folder: Path, stem: str) -> list[Path]:
    """Copy files that belong together (a video and its sidecar) to `folder/stem.EXT`, or `stem-2.EXT`, ...: the
    first names all free. Each appears whole (a hidden copy, then a hard link) and no existing file is replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    temps = []
    try:
        for source in sources:
            temps.append(folder / f".{stem}{source.suffix}.{secrets.token_hex(4)}.partial{source.suffix}")
            shutil.copyfile(source, temps[-1])
        for n in itertools.count(1):
            names = [folder / f"{stem}{'' if n == 1 else f'-{n}'}{source.suffix}" for source in sources]
            linked = []
            try:
                for temp, name in zip(temps, names):
                    os.link(temp, name)  # fails if the name exists: never replaces a file
                    linked.append(name)
                return names
            except FileExistsError:
                for name in linked:
                    name.unlink()
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def command_line(settings: dict, seeds: list[int], ending: str) -> str:
    """The `vsf gen` (video: `vsf video`) line that renders this row's seeds; outputs end in `_{ending}`."""
    from vsf_cli import guidance, negatives
    from vsf_cli.cli.options import flag
    from vsf_cli.cli.video import EXCLUDED
    from vsf_cli.models import families
    from vsf_cli.settings import GenSettings

    video = families.get(settings["family"]).video
    args = ["vsf", "video" if video else "gen", settings["prompt"]]
    for text in negatives.texts(settings["negative"]):
        args += ["--neg", text]
    args += ["--model", settings["model"], "--method", settings["method"]]
    for name in guidance.parameters(settings["method"]):
        if not (video and name in EXCLUDED):
            args += [flag(name), repr(settings[name]) if isinstance(settings[name], float) else str(settings[name])]
    args += ["--steps", str(settings["steps"]), "--size", f"{settings['width']}x{settings['height']}"]
    if video:
        args += ["--frames", str(settings["frames"])]
    args += [part for name in LOAD_FLAGS if settings[name] != GenSettings.model_fields[name].default
             for part in ((flag(name),) if settings[name] is True else (flag(name), settings[name]))]
    for seed in seeds:
        args += ["--seed", str(seed)]
    return shlex.join([*args, "-o", f"out/{{slug}}_{{seed}}_{ending}"])
