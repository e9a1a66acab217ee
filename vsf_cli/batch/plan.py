"""Expand a job file into a deterministic job list with stable ids and paths, and pick a process's shard."""

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from vsf_cli.batch.spec import BatchFile, Job
from vsf_cli.errors import UsageError

_VAR = re.compile(r"\{(\w+)\}")
# Placement does not change what an image is, so it stays out of the job id (ranks differ in device).
_NOT_IN_ID = ("device", "offload")


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
    canonical = json.dumps({k: v for k, v in sorted(settings.items()) if k not in _NOT_IN_ID}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _fill(text: str | None, values: dict[str, str]) -> str | None:
    return None if text is None else _VAR.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def fill_negative(negative: str | None, prompt: str) -> str | None:
    """Put the prompt in for `{prompt}` in a negative (presets such as abstract-art do this)."""
    return None if negative is None else negative.replace("{prompt}", prompt)


def _variables(job: Job, negative: str | None, file_vars: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the template variables the job's prompt and negative use."""
    available = {**file_vars, **(job.vars or {})}
    # {prompt} in a negative means the prompt itself (abstract art: the subject in both prompts).
    used = sorted({*_VAR.findall(job.prompt), *_VAR.findall(negative or "")} - {"prompt"})
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


def expand(spec: BatchFile, *, preset: dict, env: dict, flags: dict, out_dir: Path,
           warn=lambda message: None) -> list[PlannedJob]:
    """All jobs in file order: jobs x variable combinations x sweep x seeds.

    Precedence per job: model defaults < preset < file defaults < job (and its sweep values) < VSF_* env < flags.
    """
    from vsf_cli.batch.spec import Overrides
    from vsf_cli.models.registry import VIDEO_FAMILIES
    from vsf_cli.render.naming import expand as expand_template
    from vsf_cli.render.naming import slugify
    from vsf_cli.settings import resolve

    if Path(spec.output).is_absolute():
        raise UsageError(f"output template {spec.output!r} in a job file must be relative to the output folder")
    def local(values: dict) -> dict:
        return {k: spec.local_path(v) if k in ("image", "mask") else v for k, v in values.items()}

    defaults = local(spec.defaults.settings())
    planned: list[PlannedJob] = []
    seen: set[str] = set()
    for job in spec.jobs:
        overrides = local(Overrides(**job.model_dump(include=set(Overrides.model_fields))).settings())
        negative = job.neg if job.neg is not None else defaults.get("negative", preset.get("negative"))
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
                    if settings["family"] in VIDEO_FAMILIES and path.suffix.lower() == ".png":
                        path = path.with_suffix(".mp4")  # a video job under an image template: same name, mp4
                    planned.append(PlannedJob(len(planned), identity, path, settings, {**job.meta, **values}))
    return planned


def shard(explicit: str | None) -> tuple[int, int]:
    """(rank, world): --shard i/N, else torchrun/accelerate's RANK/WORLD_SIZE, else SLURM, else (0, 1)."""
    if explicit:
        match = re.fullmatch(r"(\d+)/(\d+)", explicit.strip())
        if not match or not 0 <= int(match[1]) < int(match[2]):
            raise UsageError(f"--shard {explicit!r}: use i/N with 0 <= i < N, e.g. 0/4")
        return int(match[1]), int(match[2])
    env = os.environ
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"),
                                ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")):
        if env.get(world_key) and int(env[world_key]) > 1:
            rank, world = int(env.get(rank_key, 0)), int(env[world_key])
            if rank_key == "SLURM_ARRAY_TASK_ID":  # array ids may start anywhere
                rank -= int(env.get("SLURM_ARRAY_TASK_MIN", 0))
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
