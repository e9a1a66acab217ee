"""Expand a job file into a deterministic job list with stable ids and paths, and pick a process's shard."""

import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from vsf_cli import negatives
from vsf_cli.batch.spec import BatchFile, Job
from vsf_cli.errors import UsageError

_VAR = re.compile(r"\{(\w+)\}")
# Placement and compilation do not change what an image is, so they stay out of the job id (ranks differ in device).
_NOT_IN_ID = ("device", "offload", "compile")
# Settings added after 0.1 stay out of the id at their default, so the ids of earlier manifests still resume.
_LATER = {"quantize": "none"}
MAX_JOBS = 100_000  # the default of --max-jobs: a bigger file is refused before it is expanded


@dataclass
class PlannedJob:
    """One image to render: its place in the list, id, output path, resolved settings and free-form meta."""

    index: int
    id: str
    path: Path
    settings: dict
    meta: dict = field(default_factory=dict)


def job_id(settings: dict) -> str:
    """A short hash of the canonical settings (seed included): the same job gets the same id on every run."""
    canonical = json.dumps({k: v for k, v in sorted(settings.items())
                            if k not in _NOT_IN_ID and (k not in _LATER or v != _LATER[k])}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _fill(text, values: dict[str, str]):
    """`{variables}` filled in a text, or in each of a list of texts (several negatives)."""
    if isinstance(text, list):
        return [_fill(t, values) for t in text]
    return None if text is None else _VAR.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def fill_negative(negative, prompt: str):
    """Put the prompt in for `{prompt}` in a negative, or in each of several (presets such as abstract-art do this)."""
    if isinstance(negative, list):
        return [n.replace("{prompt}", prompt) for n in negative]
    return None if negative is None else negative.replace("{prompt}", prompt)


def _used_variables(job: Job, negative) -> list[str]:
    # {prompt} in a negative means the prompt itself (abstract art: the subject in both prompts).
    return sorted({*_VAR.findall(job.prompt), *_VAR.findall(" ".join(negatives.texts(negative)))} - {"prompt"})


def _variables(job: Job, negative: str | None, file_vars: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the template variables the job's prompt and negative use."""
    available = {**file_vars, **(job.vars or {})}
    used = _used_variables(job, negative)
    missing = [name for name in used if name not in available]
    if missing:
        raise UsageError(f"prompt {job.prompt!r} uses {{{missing[0]}}}, which no `vars:` defines")
    return [dict(zip(used, combo)) for combo in itertools.product(*(available[name] for name in used))]


def _sweeps(job: Job, file_sweep: dict[str, list]) -> list[dict]:
    sweep = {**file_sweep, **(job.sweep or {})}
    keys = list(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def _seed_list(seeds: list[int] | int | None) -> list[int]:
    if seeds is None:
        return [0]
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def count(spec: BatchFile, preset: dict, negative: str | None = None) -> int:
    """How many jobs `expand` makes at most (jobs x variables x sweep x seeds), computed without making them.

    `negative` is one for every job (the `--neg` flag), in place of the file's.
    """
    total = 0
    default_negative = spec.defaults.neg if spec.defaults.neg is not None else preset.get("negative")
    for job in spec.jobs:
        job_negative = next((n for n in (negative, job.neg) if n is not None), default_negative)
        available = {**(spec.vars or {}), **(job.vars or {})}
        n = math.prod(len(available.get(name) or [None]) for name in _used_variables(job, job_negative))
        n *= math.prod(len(values) for values in {**(spec.sweep or {}), **(job.sweep or {})}.values())
        seeds = job.seeds if job.seeds is not None else spec.seeds
        total += n * (1 if seeds is None else seeds if isinstance(seeds, int) else len(seeds))
    return total


def check_output_template(template: str, what: str) -> None:
    """An output template names a file inside the output folder: no absolute path, no '..'."""
    parts = [p for p in re.split(r"[/\\]", template) if p]
    if Path(template).is_absolute() or template.startswith(("/", "\\")) or ".." in parts:
        raise UsageError(f"{what} must stay inside the output folder (use -o/--out to choose the folder)")


def expand(spec: BatchFile, *, preset: dict, env: dict, flags: dict, out_dir: Path,
           warn=lambda message: None, max_jobs: int = MAX_JOBS) -> list[PlannedJob]:
    """All jobs in file order: jobs x variable combinations x sweep x seeds.

    Precedence per job: model defaults < preset < file defaults < job (and its sweep values) < VSF_* env < flags.
    A negative in `flags` replaces every job's before its `{variables}` and `{prompt}` are filled in, as a job's own.
    A file that would make more than `max_jobs` jobs is refused before any is made.
    """
    from vsf_cli.batch.spec import Overrides
    from vsf_cli.models import families
    from vsf_cli.render.naming import expand as expand_template
    from vsf_cli.render.naming import slugify
    from vsf_cli.settings import resolve

    check_output_template(spec.output, f"output template {spec.output!r} in {spec._source}")
    flags = dict(flags)
    flag_negative = flags.pop("negative", None)
    total = count(spec, preset, flag_negative)
    if total > max_jobs:
        raise UsageError(f"{spec._source} expands to {total:,} jobs (jobs x vars x sweep x seeds), more than the "
                         f"limit of {max_jobs:,}; pass --max-jobs {total} to allow it, or split the file")

    def local(values: dict) -> dict:
        return {k: spec.local_path(v) if k in ("image", "mask") else v for k, v in values.items()}

    defaults = local(spec.defaults.settings())
    planned: list[PlannedJob] = []
    seen: set[str] = set()
    paths: dict[str, int] = {}
    for job in spec.jobs:
        overrides = local(Overrides(**job.model_dump(include=set(Overrides.model_fields))).settings())
        default_negative = defaults.get("negative", preset.get("negative"))
        negative = next((n for n in (flag_negative, job.neg) if n is not None), default_negative)
        for values in _variables(job, negative, spec.vars or {}):
            for sweep in _sweeps(job, spec.sweep or {}):
                try:
                    swept = Overrides(**sweep).settings()
                except ValidationError as e:
                    err = e.errors()[0]
                    raise UsageError(f"sweep {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
                prompt = _fill(job.prompt, values)
                text = {"prompt": prompt, "negative": fill_negative(_fill(negative, values), prompt)}
                for seed in _seed_list(job.seeds if job.seeds is not None else spec.seeds):
                    settings = resolve(preset, defaults, overrides, swept, text, {"seed": seed}, env, flags, warn=warn)
                    identity = job_id(settings)
                    if identity in seen:  # e.g. a flag collapsed a sweep: render it once
                        continue
                    seen.add(identity)
                    fields = {"index": len(planned), "seed": seed, "slug": slugify(settings["prompt"]),
                              "model": Path(settings["model"]).name, "method": settings["method"], "id": identity}
                    path = out_dir / expand_template(spec.output, fields)
                    if families.get(settings["family"]).video and path.suffix.lower() == ".png":
                        path = path.with_suffix(".mp4")  # a video job under an image template: same name, mp4
                    key = os.path.normcase(os.path.abspath(path))
                    if key in paths:
                        raise UsageError(f"output template {spec.output!r} gives the same file for jobs {paths[key]} "
                                         f"and {len(planned)} ({path}); add {{index}}, {{seed}} or {{id}} to it")
                    paths[key] = len(planned)
                    planned.append(PlannedJob(len(planned), identity, path, settings, {**job.meta, **values}))
    return planned


_ENV_SHARDS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"),
               ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"))


def _env_int(key: str, default: int | None = None) -> int:
    text = os.environ.get(key, "").strip()
    if not text and default is not None:
        return default
    if not re.fullmatch(r"[+-]?\d+", text):
        raise UsageError(f"{key}={text!r} is not a whole number (or pass --shard i/N to choose the shard)")
    return int(text)


def shard(explicit: str | None) -> tuple[int, int]:
    """(rank, world): --shard i/N, else torchrun/accelerate's RANK/WORLD_SIZE, else SLURM, else (0, 1).

    Every source is checked alike: whole numbers with 0 <= rank < world, or one UsageError line naming it.
    """
    if explicit:
        match = re.fullmatch(r"(\d+)/(\d+)", explicit.strip())
        if not match or not 0 <= int(match[1]) < int(match[2]):
            raise UsageError(f"--shard {explicit!r}: use i/N with 0 <= i < N, e.g. 0/4")
        return int(match[1]), int(match[2])
    for rank_key, world_key in _ENV_SHARDS:
        if not os.environ.get(world_key, "").strip():
            continue
        world, rank = _env_int(world_key), _env_int(rank_key, default=0)
        where = f"{rank_key}={rank}"
        if world < 1:
            raise UsageError(f"{world_key}={world} must be at least 1 (or pass --shard i/N to choose the shard)")
        if rank_key == "SLURM_ARRAY_TASK_ID":  # array ids may start anywhere, and step
            first, step = _env_int("SLURM_ARRAY_TASK_MIN", 0), _env_int("SLURM_ARRAY_TASK_STEP", 1)
            if step < 1 or (rank - first) % step:
                raise UsageError(f"{where} is not SLURM_ARRAY_TASK_MIN={first} plus a multiple of "
                                 f"SLURM_ARRAY_TASK_STEP={step}; pass --shard i/N to choose the shard")
            where += f" (task {(rank - first) // step} from SLURM_ARRAY_TASK_MIN={first})" if first or step > 1 else ""
            rank = (rank - first) // step
        if not 0 <= rank < world:
            raise UsageError(f"{where} with {world_key}={world}: need 0 <= {rank_key} < {world_key} "
                             "(or pass --shard i/N to choose the shard)")
        if world > 1:
            return rank, world
    return 0, 1


def local_device(device: str | None) -> str | None:
    """The GPU of this process under torchrun/accelerate (LOCAL_RANK) when the device is left to auto."""
    local = os.environ.get("LOCAL_RANK")
    if (device in (None, "auto")) and local is not None:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(local) % torch.cuda.device_count()}"
    return device
