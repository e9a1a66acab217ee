"""Job files: the YAML schema (pydantic), plain-text prompt lists and NegGenBench JSON, with errors that name lines."""

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model, field_validator

from vsf_cli.errors import UsageError
from vsf_cli.settings import GenSettings


# GenSettings fields a file may not set: the prompt pair and seed have their own keys, hashes are computed,
# size is given as `size`, and the device is a property of the process (flags, LOCAL_RANK), not of a job.
_NOT_IN_FILES = ("prompt", "negative", "seed", "image_sha256", "mask_sha256", "width", "height", "device")


class _OverridesBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def settings(self) -> dict:
        """As settings keys: `neg` becomes `negative`, `size` becomes width and height."""
        values = self.model_dump(exclude_none=True)
        if "size" in values:
            values.update(parse_size(values.pop("size")))
        if "neg" in values:
            values["negative"] = values.pop("neg")
        return values


Overrides = create_model(
    "Overrides",
    __base__=_OverridesBase,
    __doc__="Generation settings a file's `defaults:`, a job or a sweep may set; `size` is WIDTHxHEIGHT or a number.",
    neg=(str | None, None),
    size=(str | int | None, None),
    **{name: (field.annotation | None, None) for name, field in GenSettings.model_fields.items()
       if name not in _NOT_IN_FILES},
)

SWEEPABLE = tuple(f for f in Overrides.model_fields if f not in ("neg", "image", "mask"))


class Expansion(BaseModel):
    """What multiplies a job: seeds, a cartesian sweep of settings, and template variables."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[int] | int | None = None
    sweep: dict[str, list[Any]] | None = None
    vars: dict[str, list[str]] | None = None

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("a seed count must be at least 1")
        if isinstance(value, list) and (not value or any(s < 0 for s in value)):
            raise ValueError("seeds must be a non-empty list of non-negative integers")
        return value

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, value):
        for key, options in (value or {}).items():
            if key not in SWEEPABLE:
                raise ValueError(f"cannot sweep {key!r}; sweepable: {', '.join(SWEEPABLE)}")
            if not options:
                raise ValueError(f"sweep {key!r} has no values")
        return value


class Job(Overrides, Expansion):
    """One entry of `jobs:`: a prompt, its negative, any overrides, and free-form `meta` kept in the manifest."""

    prompt: str = Field(min_length=1)
    meta: dict[str, Any] = {}


class BatchFile(Expansion):
    """A whole job file."""

    description: str = ""
    preset: str | None = None
    defaults: Overrides = Overrides()
    output: str = "{index:05d}_{slug}_{id}.png"
    jobs: list[Job] = Field(min_length=1)
    _folder: Path = PrivateAttr(Path("."))  # where the file lives: `image:` and `mask:` are relative to it

    def local_path(self, value: str) -> str:
        """An `image:`/`mask:` path from the file, resolved against its folder; it may not climb out of it."""
        path = Path(value)
        if path.is_absolute():
            return value
        resolved = (self._folder / path).resolve()
        if not resolved.is_relative_to(self._folder.resolve()):
            raise UsageError(f"{value!r} points outside the job file's folder {self._folder}; give an absolute path")
        return str(resolved)


def preset_names() -> list[str]:
    """Presets shipped with the package (the top-level presets/ folder, installed as vsf_cli.presets)."""
    from importlib.resources import files

    return sorted(p.name.removesuffix(".yaml") for p in files("vsf_cli.presets").iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The file of a shipped preset, by name."""
    from importlib.resources import files

    if name not in preset_names():
        raise UsageError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    return Path(str(files("vsf_cli.presets") / f"{name}.yaml"))


def preset_defaults(name: str | None) -> dict:
    """A preset's `defaults:` as settings (the layer between model defaults and a file's own defaults)."""
    return load(preset_path(name)).defaults.settings() if name else {}


def parse_size(size: str | int) -> dict:
    """'1024x768' or 768 -> {'width': ..., 'height': ...}."""
    parts = str(size).lower().replace("*", "x").split("x")
    try:
        width, height = (int(parts[0]), int(parts[0])) if len(parts) == 1 else map(int, parts)
    except ValueError:
        raise UsageError(f"size {size!r}: use WIDTHxHEIGHT like 1024x768, or one number") from None
    return {"width": width, "height": height}


def load(path: Path) -> BatchFile:
    """Read a YAML job file, a plain-text prompt list or NegGenBench JSON; every problem is one UsageError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {path}: not UTF-8 text") from None
    if path.suffix.lower() == ".txt":
        batch = _from_text(path, text)
    elif path.suffix.lower() == ".json":
        batch = _from_neggenbench(path, text)
    else:
        batch = _from_yaml(path, text)
    batch._folder = path.parent
    return batch


def _from_yaml(path: Path, text: str) -> BatchFile:
    try:
        data = yaml.safe_load(text)
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UsageError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a job file is a mapping with `jobs:` (and optional defaults, seeds, sweep, vars)")
    try:
        return BatchFile(**data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = err["loc"]
        line = _line(tree, loc)
        where = f"{path}:{line}" if line else str(path)
        where += f" ({'.'.join(map(str, loc))})" if loc else ""
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            model = BatchFile if len(loc) == 1 else (Job if loc[0] == "jobs" else Overrides)
            allowed = [f for f in model.model_fields if f != "meta" or model is Job]
            message = f"unknown key; allowed: {', '.join(allowed)}"
        raise UsageError(f"{where}: {message}") from None


def _line(node, loc) -> int | None:
    """The 1-based line of the YAML node at a pydantic error location (walks mappings and sequences)."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == key), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _from_text(path: Path, text: str) -> BatchFile:
    jobs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            prompt, _, neg = line.partition("|")
            jobs.append(Job(prompt=prompt.strip(), neg=neg.strip() or None))
    if not jobs:
        raise UsageError(f"{path}: no prompts (one per line, `prompt | negative`, # for comments)")
    return BatchFile(jobs=jobs)


def _from_neggenbench(path: Path, text: str) -> BatchFile:
    try:
        items = json.loads(text)
        jobs = [Job(prompt=item["prompt"], neg=item["negative"], meta={k: v for k, v in item.items()
                                                                        if k not in ("prompt", "negative")})
                for item in items]
    except (json.JSONDecodeError, TypeError, KeyError, ValidationError) as e:
        raise UsageError(f"{path}: expected NegGenBench JSON, a list of {{prompt, negative, ...}} ({e})") from None
    if not jobs:
        raise UsageError(f"{path}: no items")
    return BatchFile(jobs=jobs, seeds=[0, 1])
