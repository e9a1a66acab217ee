"""`--quantize`: the choices, what each needs on this machine, and the diffusers quantization config it loads with.

Every choice goes through diffusers' and transformers' own quantizers (torchao, optimum-quanto, bitsandbytes, GGUF);
nothing is quantized by hand. A named choice quantizes the denoisers and the text encoders; the VAE keeps --dtype.
A `.gguf` file replaces the transformer (from_single_file); the text encoders then keep --dtype.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass

from vsf_cli.errors import UsageError


@dataclass(frozen=True)
class Choice:
    """One named quantization: its backend, what it runs on, and its one-line description."""

    name: str
    backend: str  # the module it needs
    pip: str  # what installs it
    devices: tuple[str, ...]  # device types it runs on
    about: str  # backend and devices, as --help gives them
    capability: tuple[int, int] | None = None  # least CUDA compute capability


CHOICES = {c.name: c for c in (
    Choice("int8", "torchao", "torchao", ("cpu", "cuda"), "torchao; CPU, CUDA"),
    Choice("int8-quanto", "optimum.quanto", "optimum-quanto", ("cpu", "cuda", "mps"), "optimum-quanto; CPU, CUDA, MPS"),
    Choice("fp8", "torchao", "torchao", ("cuda",), "torchao; CUDA 8.9+", capability=(8, 9)),
    Choice("nf4", "bitsandbytes", "bitsandbytes", ("cuda",), "bitsandbytes; CUDA"),
)}
HELP = ("Quantize the transformer(s) and text encoders: none, " + ", ".join(f"{c.name} ({c.about})" for c in
        CHOICES.values()) + "; or a GGUF transformer, PATH.gguf or ORG/NAME/FILE.gguf. (default: none)")

GGUF_PACKAGE = ("gguf", "gguf")  # module and pip name that GGUF files need
_HUB_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)/(.+\.gguf)$")


def is_gguf(value: str) -> bool:
    return value.lower().endswith(".gguf")


def gguf_repo(value: str) -> str | None:
    """The hub repo of an `ORG/NAME/FILE.gguf` that is not a local file; None for a local file."""
    found = _HUB_FILE.match(value)
    return found[1] if found and not os.path.isfile(os.path.expanduser(value)) else None


def check(value: str, spec, device: str) -> None:
    """Refuse, before anything loads, a choice this machine cannot run or a GGUF file that is not there."""
    if value == "none":
        return
    if is_gguf(value):
        if dict(spec.pipeline_config).get("boundary_ratio") is not None:  # Wan 2.2 A14B: two expert transformers
            raise UsageError(f"--quantize {value}: a GGUF file holds one transformer, and {spec.alias} has two "
                             "experts; use a named choice such as int8, which quantizes both")
        require("with a .gguf file", *GGUF_PACKAGE)
        if not os.path.isfile(os.path.expanduser(value)) and not _HUB_FILE.match(value):
            raise UsageError(f"--quantize {value}: no such file (give PATH.gguf, or ORG/NAME/FILE.gguf on the hub)")
        return
    choice = CHOICES.get(value)
    if choice is None:
        raise UsageError(f"bad --quantize {value!r}; use none, {', '.join(CHOICES)}, or a .gguf file")
    kind = device.split(":")[0]
    works = [c.name for c in CHOICES.values() if kind in c.devices and c.capability is None]
    if kind not in choice.devices:
        raise UsageError(f"--quantize {value} needs {' or '.join(d.upper() for d in choice.devices)}; on {device} "
                         f"use {' or '.join(works)}")
    if choice.capability is not None and kind == "cuda":
        import torch

        have = torch.cuda.get_device_capability(device)
        if have < choice.capability:
            raise UsageError(f"--quantize {value} needs a GPU of compute capability "
                             f"{'.'.join(map(str, choice.capability))} or later (this one is "
                             f"{'.'.join(map(str, have))}); use int8 or nf4")
    require(value, choice.backend, choice.pip)


def require(what: str, module: str, pip: str) -> None:
    """Refuse `--quantize WHAT` in one line when the package it needs is not installed."""
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"--quantize {what} needs {pip}: pip install {pip}")


def configs(value: str, dtype) -> tuple:
    """A named choice as (diffusers' config, transformers' config): the two libraries name their arguments
    differently, so each kind of model gets its own."""
    import diffusers
    import transformers

    if value in ("int8", "fp8"):
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

        kind = Int8WeightOnlyConfig() if value == "int8" else Float8WeightOnlyConfig()
        return diffusers.TorchAoConfig(kind), transformers.TorchAoConfig(kind)
    if value == "int8-quanto":
        return diffusers.QuantoConfig(weights_dtype="int8"), transformers.QuantoConfig(weights="int8")
    if value == "nf4":
        options = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": dtype}
        return diffusers.BitsAndBytesConfig(**options), transformers.BitsAndBytesConfig(**options)
    raise UsageError(f"bad --quantize {value!r}")


def pipeline_config(value: str, pipeline_class, family, dtype):
    """diffusers' PipelineQuantizationConfig for a named choice: every denoiser and text encoder the pipeline has."""
    import inspect

    import diffusers

    components = [name for name in inspect.signature(pipeline_class.__init__).parameters
                  if name in family.denoisers or name.startswith("text_encoder")]
    for_diffusers, for_transformers = configs(value, dtype)
    return diffusers.PipelineQuantizationConfig(quant_mapping={
        name: for_diffusers if name in family.denoisers else for_transformers for name in components})


def gguf_transformer(value: str, pipeline_class, source: str, dtype, *, offline: bool):
    """The pipeline's transformer loaded from a GGUF file, computing in `dtype`; its config comes from `source`."""
    import inspect

    import diffusers

    annotation = inspect.signature(pipeline_class.__init__).parameters["transformer"].annotation
    model_class = annotation if isinstance(annotation, type) else getattr(diffusers, _class_name(annotation))
    repo = gguf_repo(value)
    location = (f"https://huggingface.co/{repo}/blob/main/{value[len(repo) + 1:]}" if repo
                else os.path.expanduser(value))
    return model_class.from_single_file(
        location, quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=dtype), config=source,
        subfolder="transformer", dtype=dtype, local_files_only=offline)


def _class_name(annotation) -> str:
    """A string annotation's class name: "WanTransformer3DModel" from 'WanTransformer3DModel | None'."""
    return next(name for name in re.findall(r"[A-Za-z_][\w]*", str(annotation).split(".")[-1]) if name != "None")


def write_gguf(model, path):
    """Write a model's weights to a GGUF file with the `gguf` package, as the usual converters do: linear layers'
    weights in Q8_0 where a row splits into 32-value blocks, everything else (biases, norms, pad tokens) in float32,
    under diffusers' own key names (the benchmark's and the tests' GGUF files)."""
    import gguf
    import numpy as np
    import torch

    linear = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    writer = gguf.GGUFWriter(str(path), "vsf")
    for name, tensor in model.state_dict().items():
        array = tensor.detach().float().cpu().numpy()
        if name in linear and array.shape[-1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
