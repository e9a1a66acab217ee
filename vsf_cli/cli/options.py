"""The generation flags `gen`, `video` and `batch` share, each declared once and built from the field it sets.

A method knob's flag comes from its method's pydantic field (vsf_cli.guidance): `nag_scale` gives `--nag-scale`, and
its help is the field's description, range (ge/gt/le/lt) and default, so the help says what is checked. `--steps`
and `--guidance-scale` are built from their GenSettings fields the same way; the others have their help written here.
"""

import inspect
import typing

import typer
from pydantic.fields import FieldInfo

# Flags with their help written here: parameter name -> (type, help). A flag is its name with dashes; its settings
# key is the same name, except for those `to_settings` renames.
_WRITTEN: dict[str, tuple[type, str]] = {
    "neg": (list[str], "What to keep out: the negative prompt; repeat it for several, each removed on its own."),
    "size": (str, "WIDTHxHEIGHT, or one number for a square; multiples of 16 (32 for wan22-ti2v-5b)."),
    "lora": (list[str], "LoRA as [EXPERT=]PATH_OR_HUB_ID[:SCALE], repeatable; safetensors only. Into every "
             "transformer, or with high= / low= into one Wan 2.2 A14B expert. (scale default: 1.0)"),
    "device": (str, "cuda, cuda:1, mps or cpu. (default: auto; `vsf batch` under torchrun: cuda:$LOCAL_RANK)"),
    "dtype": (str, "float16, bfloat16 or float32. (default: auto: bfloat16 on GPU, float32 on CPU)"),
    "offload": (str, "none, model (whole models move to the GPU in turn) or sequential (layer by layer, least "
                "memory). (default: none)"),
    "compile": (bool, "torch.compile each transformer block: the first image is slow, the rest faster; eager if "
                "compiling fails. (default: off)"),
}
# `vsf batch --neg`: flags are the top layer, over every job's own negative (its {variables} are still filled in).
EVERY_JOB_NEG = "Replaces every job's negative (flags override the file)."


def flags(model: str, *, exclude: tuple[str, ...] = (), every_job: bool = False) -> dict[str, tuple[type, str]]:
    """The shared flags as parameter name -> (type, help), in --help order: negative, method, its knobs, the rest.

    `model` is the command's default model, whose numbers the help gives for model-dependent defaults; `every_job`
    (batch) says in --neg's help that it replaces every job's negative.
    """
    from vsf_cli.guidance import METHODS, knobs
    from vsf_cli.settings import GenSettings

    neg = _WRITTEN["neg"][1] + (f" {EVERY_JOB_NEG}" if every_job else "")
    methods = ", ".join(m for m in METHODS if m != "none")
    out = {"neg": (list[str], neg),
           "method": (str, f"Guidance: {methods}, or none (positive only). (default: vsf with --neg, else none)")}
    for name, (field, takers) in knobs().items():
        out[name] = (_cli_type(field), describe(name, field, model, "/".join(m.upper() for m in takers)))
    out["steps"] = (int, describe("steps", GenSettings.model_fields["steps"], model))
    width, height = (_model_value(model, side) for side in ("width", "height"))
    out["size"] = (str, f"{_WRITTEN['size'][1]} (default: the model's; {width}x{height} for {model})")
    out["guidance_scale"] = (float, describe("guidance_scale", GenSettings.model_fields["guidance_scale"], model))
    from vsf_cli.models.quantize import HELP  # --quantize's help is its choices' own

    out.update({name: _WRITTEN[name] for name in ("lora", "device", "dtype", "offload", "compile")})
    out["quantize"] = (str, HELP)
    return {name: value for name, value in out.items() if name not in exclude}


def describe(name: str, field: FieldInfo, model: str, label: str = "") -> str:
    """The help of setting `name`: "NAG extrapolation s; 1 = off. Range 1-20. (default: 4)".

    A setting that the model registry sets per model says "(default: the model's; 3.5 for <model>)".
    """
    from vsf_cli.settings import MODEL_DEFAULTS

    text = f"{label} {field.description}" if label else field.description[:1].upper() + field.description[1:]
    default = (f"the model's; {_number(_model_value(model, name))} for {model}" if name in MODEL_DEFAULTS
               else _number(field.default))
    return " ".join(part for part in (f"{text}.", _range(field), f"(default: {default})") if part)


def _range(field: FieldInfo) -> str:
    """'Range 1-20.', 'Range -5 to inf.', 'Range >1 to 30.', 'One of paper, reference.', or '' (unbounded)."""
    choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
    if choices:
        return f"One of {', '.join(map(str, choices))}."
    bound = {attr: _number(getattr(c, attr)) for c in field.metadata for attr in ("ge", "gt", "le", "lt")
             if getattr(c, attr, None) is not None}
    low = bound.get("ge") or (f">{bound['gt']}" if "gt" in bound else None)
    high = bound.get("le") or (f"<{bound['lt']}" if "lt" in bound else None)
    if low is None and high is None:
        return ""
    unbounded = field.annotation is float  # floats take inf (offset=inf turns VSF's offset off)
    if low is None:
        return f"Range -inf to {high}." if unbounded else f"At most {high}."
    if high is None:
        return f"Range {low} to inf." if unbounded else f"At least {low}."
    plain = low[0].isdigit() and high[0].isdigit()
    return f"Range {low}-{high}." if plain else f"Range {low} to {high}."


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cli_type(field: FieldInfo) -> type:
    """What the flag parses: the field's number type; a choice (Literal) as text, checked by the settings."""
    return field.annotation if field.annotation in (int, float) else str


def _model_value(model: str, name: str):
    from vsf_cli.models.registry import resolve

    return getattr(resolve(model), name)


def flag(name: str) -> str:
    """The flag of a setting: `nag_scale` is `--nag-scale`."""
    return f"--{name.replace('_', '-')}"


def _spelling(name: str, kind: type) -> str:
    """`--dtype`; a switch both ways, `--compile/--no-compile`, so a flag can turn off what a file turned on."""
    return f"{flag(name)}/--no-{name.replace('_', '-')}" if kind is bool else flag(name)


def add_flags(model: str, *, after: str, exclude: tuple[str, ...] = (), every_job: bool = False):
    """Give a command the shared flags, after its parameter `after`; their values arrive in its `**options`.

    Typer reads a command's parameters from its signature, so the flags are added there; `to_settings(options)`
    turns the values into a settings layer.
    """
    def decorate(command):
        signature = inspect.signature(command)
        params = list(signature.parameters.values())
        if params[-1].kind is not inspect.Parameter.VAR_KEYWORD:
            raise TypeError(f"{command.__name__} needs a **options parameter for the shared flags")
        added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind,
                                   default=typer.Option(None, _spelling(name, kind), help=text))
                 for name, (kind, text) in flags(model, exclude=exclude, every_job=every_job).items()]
        clash = {p.name for p in params} & {p.name for p in added}
        if clash:
            raise TypeError(f"{command.__name__} declares {', '.join(sorted(clash))}, which the shared flags add")
        at = [p.name for p in params].index(after) + 1
        command.__signature__ = signature.replace(parameters=[*params[:at], *added, *params[at:-1]])
        return command

    return decorate


def to_settings(options: dict) -> dict:
    """The shared flags' values as a settings layer (None: not given): --neg is `negative`, --size width and height."""
    from vsf_cli.batch.spec import parse_size

    values = dict(options)
    if "neg" in values:
        from vsf_cli.negatives import normalise

        values["negative"] = normalise(values.pop("neg"))
    size = values.pop("size", None)
    if "lora" in values:
        values["lora"] = values["lora"] or None
    return {**values, **(parse_size(size) if size else {})}
