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
    neg=(str | list[str] | None, None),
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
    _folder: Path = PrivateAttr(Path("."))  # where the file lives: `image:`, `mask:` and model paths are relative to it
    _source: str = PrivateAttr("the job file")  # its name, for messages

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
    batch._folder, batch._source = path.parent, str(path)
    _models_from_the_file(batch)
    return batch


def model_path(value: str, folder: Path) -> str:
    """A `model:` written in a job file, as `--model` takes it: a relative path is relative to the file's folder.

    A path is `./x`, `../x`, or a name (`x`, `org/x`) that is an existing folder next to the job file; aliases and
    hub ids (`org/name` with no such folder) stay as written, and so does everything when the file is in the
    current folder.
    """
    from vsf_cli.models.registry import ALIASES, MODELS

    name = value.strip()
    if not name or name.lower() in MODELS or name.lower() in ALIASES or Path(name).expanduser().is_absolute():
        return value
    explicit = name in (".", "..") or name.startswith(("./", "../", ".\\", "..\\"))
    if not explicit and not (folder / name).is_dir():
        return value
    if folder.resolve() == Path.cwd().resolve():
        return value
    return str((folder / name).resolve())


def _models_from_the_file(batch: BatchFile) -> None:
    """Make every `model:` of the file (defaults, jobs, sweeps) relative to the file's folder, not the current one."""
    def fix(holder) -> None:
        if getattr(holder, "model", None):
            holder.model = model_path(holder.model, batch._folder)
        sweep = getattr(holder, "sweep", None)
        if sweep and isinstance(sweep.get("model"), list):
            sweep["model"] = [model_path(m, batch._folder) if isinstance(m, str) else m for m in sweep["model"]]

    for holder in (batch.defaults, batch, *batch.jobs):
        fix(holder)


MAX_ALIASES = 16  # YAML aliases (*name) a job file may use; each may stand for a whole subtree
MAX_EXPANDED_NODES = 100_000  # YAML values a file with aliases may expand to


def _check_aliases(path: Path, text: str) -> None:
    """Refuse alias bombs before anything is built: few aliases, and a bounded size once they are expanded."""
    aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise UsageError(f"{path}:{event.start_mark.line + 1}: more than {MAX_ALIASES} YAML aliases "
                                 f"(*{event.anchor}); write the values out, or put shared settings in `defaults:`")
    if not aliases:
        return
    sizes: dict[int, int] = {}

    def size(node) -> int:  # expanded size; an aliased node is one object, so memoised by identity
        if id(node) not in sizes:
            children = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [x for pair in node.value for x in pair]
            sizes[id(node)] = 1 + sum(size(child) for child in children)
        return sizes[id(node)]

    expanded = size(yaml.compose(text, Loader=yaml.SafeLoader))
    if expanded > MAX_EXPANDED_NODES:
        raise UsageError(f"{path}: its YAML aliases expand it to {expanded:,} values, more than {MAX_EXPANDED_NODES:,} "
                         "(an alias bomb?); write the values out")


def _from_yaml(path: Path, text: str) -> BatchFile:
    try:
        _check_aliases(path, text)
        data = yaml.safe_load(text)
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UsageError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except RecursionError:
        raise UsageError(f"{path}: nested too deeply to be a job file") from None
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
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            prompt, _, neg = line.partition("|")
            if not prompt.strip():
                raise UsageError(f"{path}:{number}: no prompt before the '|' (one `prompt | negative` per line)")
            jobs.append(Job(prompt=prompt.strip(), neg=neg.strip() or None))
    if not jobs:
        raise UsageError(f"{path}: no prompts (one per line, `prompt | negative`, # for comments)")
    return BatchFile(jobs=jobs)


def _from_neggenbench(path: Path, text: str) -> BatchFile:
    expected = "expected NegGenBench JSON, a list of {prompt, negative, ...}"
    try:
        items = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise UsageError(f"{path}: {expected} (not valid JSON: {e})") from None
    if not isinstance(items, list):
        raise UsageError(f"{path}: {expected}")
    jobs = []
    for number, item in enumerate(items):
        try:
            jobs.append(Job(prompt=item["prompt"], neg=item["negative"],
                            meta={k: v for k, v in item.items() if k not in ("prompt", "negative")}))
        except (TypeError, KeyError, AttributeError) as e:
            raise UsageError(f"{path}: item {number}: {expected} (missing {e})") from None
        except ValidationError as e:
            err = e.errors()[0]
            raise UsageError(f"{path}: item {number} ({'.'.join(map(str, err['loc']))}): {err['msg']}") from None
    if not jobs:
        raise UsageError(f"{path}: no items")
    return BatchFile(jobs=jobs, seeds=[0, 1])
