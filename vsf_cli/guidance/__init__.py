"""Negative guidance on stock diffusers pipelines: `apply(pipe, method, negative=..., **params)` and the method registry."""

import contextlib
import functools
import importlib
from typing import NamedTuple

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from vsf_cli.errors import UsageError

# One file per method; values are "module:class" so listing methods imports nothing heavy.
METHODS = {
    "vsf": "vsf_cli.guidance.vsf:VSF",
    "none": "vsf_cli.guidance.none:NoGuidance",
    "nag": "vsf_cli.guidance.nag:NAG",
    "nasa": "vsf_cli.guidance.nasa:NASA",
    "cfg": "vsf_cli.guidance.cfg:CFG",
}


def _method_class(method: str):
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    module, cls = METHODS[method].split(":")
    return getattr(importlib.import_module(module), cls)


def parameters(method: str) -> list[str]:
    """The names of a method's parameters (what the CLI passes on and records in metadata)."""
    return list(_method_class(method).model_fields)


class Knob(NamedTuple):
    """A method parameter: its one declaration (the pydantic field) and the methods that take it."""

    field: FieldInfo
    methods: tuple[str, ...]


@functools.cache
def knobs() -> dict[str, Knob]:
    """Every method's parameters, each once, in METHODS order: what settings, flags and metadata are built from."""
    return collect_knobs({method: _method_class(method) for method in METHODS})


def collect_knobs(classes: dict[str, type]) -> dict[str, Knob]:
    """The union of the classes' fields; a name that two methods declare differently is refused (TypeError)."""
    found: dict[str, Knob] = {}
    for method, method_class in classes.items():
        for name, field in method_class.model_fields.items():
            if name not in found:
                found[name] = Knob(field, (method,))
                continue
            first = found[name]
            if _declaration(first.field) != _declaration(field):
                raise TypeError(f"method parameter {name!r} is declared differently by {first.methods[0]} and {method} "
                                "(type, default, range or description); declare it once, on a shared base class")
            found[name] = Knob(first.field, (*first.methods, method))
    return found


def _declaration(field: FieldInfo) -> tuple:
    return field.annotation, field.default, field.metadata, field.description


def create(method: str, **params):
    """Build a method from its name and parameters, turning range errors into one-line UsageErrors."""
    method_class = _method_class(method)
    try:
        return method_class(**params)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or method}: {err['msg']}" for err in e.errors())
        raise UsageError(f"{method}: {problems}") from None


@contextlib.contextmanager
def apply(pipe, method: str = "vsf", *, negative: str | list | None = None, max_sequence_length: int | None = None,
          **params):
    """Install a guidance method on `pipe` for the duration of the block; leaving it restores the pipeline exactly.

    `negative` is one string for every prompt, or a list with one entry per prompt; an entry that is a list or tuple
    of strings gives that prompt several negatives, each encoded on its own and all removed
    (`negative=[("wheels", "sun")]`). `max_sequence_length` is the one the pipeline call will get, where the
    negative is cut as the pipeline cuts the positive (None: the pipeline's default). The block yields the extra
    pipeline-call arguments the method needs (only `cfg` has any): `pipe(prompt, **extra)`.
    """
    guide = create(method, **params)
    negatives = [negative] if isinstance(negative, str) else list(negative or [])
    if guide.needs_negative and (not negatives or not all(_is_negative(n) for n in negatives)):
        raise UsageError(f"{method} needs a non-empty negative prompt")
    installed = guide.install(pipe, negatives, max_sequence_length=max_sequence_length)
    try:
        yield guide.call_kwargs(pipe, negatives)
    finally:
        installed.remove()


def _is_negative(entry) -> bool:
    """One non-blank string, or a non-empty list or tuple of them."""
    if isinstance(entry, str):
        return bool(entry.strip())
    return isinstance(entry, list | tuple) and bool(entry) and all(isinstance(t, str) and t.strip() for t in entry)
