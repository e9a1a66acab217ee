"""Loading stock diffusers pipelines: offline mode, device/dtype/offload, LoRAs, and hub errors as one-line errors."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vsf_cli.errors import GatedModelError, OfflineError, UsageError, VsfError
from vsf_cli.models import compiling, families
from vsf_cli.models import quantize as quantization
from vsf_cli.models.registry import ModelSpec, looks_like_hub_id

DTYPES = ("float16", "bfloat16", "float32")
OFFLOADS = ("none", "model", "sequential")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
LORA_DEFAULT_FILE = "pytorch_lora_weights.safetensors"


# Loggers that speak when torchao is installed and diffusers imports it, on every command: CUDA kernels a CPU build
# lacks, and torch deprecating what torchao registers. Nothing a user can act on; errors still show.
_IMPORT_CHATTER = ("torchao", "torch.utils._pytree")


def quiet_imports() -> None:
    """Keep the libraries' import-time notes (see _IMPORT_CHATTER) out of the output, for the whole process."""
    for name in _IMPORT_CHATTER:
        logging.getLogger(name).setLevel(logging.ERROR)


def set_offline(offline: bool) -> None:
    """Forbid all hub traffic for this process.

    Call it BEFORE diffusers or transformers is imported: huggingface_hub reads HF_HUB_OFFLINE once, at import, and
    diffusers copies that value into its own modules. If huggingface_hub is already imported, its flag is also set
    here, so its HTTP session refuses every request; `load_pipeline(offline=True)` also passes local_files_only.
    """
    if not offline:
        return
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def is_cached(hub_id: str) -> bool:
    """Whether the hub cache holds this repo's model_index.json (looks at disk only, never the network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "model_index.json")
    except Exception:  # noqa: BLE001 — a malformed id or unreadable cache just means "not cached"
        return False
    return isinstance(found, str)


def resolve_device(device: str) -> str:
    """`auto` -> cuda, else mps, else cpu; an explicit device must exist on this machine."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise UsageError(f"bad --device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device} but torch sees no CUDA device (torch {torch.__version__})")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device} but MPS is not available on this machine")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` -> bfloat16 on CUDA, float32 elsewhere (CPU and MPS half-precision kernels are slow or incomplete)."""
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise UsageError(f"bad --dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return dtype


def parse_lora(s: str) -> tuple[str, float]:
    """Split `PATH_OR_HUB_ID[:SCALE]` on its last ':', and only when what follows is a number (default scale 1.0)."""
    s = s.strip()
    head, sep, tail = s.rpartition(":")
    if not sep:
        source, scale = s, 1.0
    else:
        try:
            scale = float(tail)
        except ValueError:
            if os.path.exists(s):
                return s, 1.0
            if head and (os.path.exists(head) or looks_like_hub_id(head) or head.endswith(".safetensors") or not tail):
                raise UsageError(
                    f"bad LoRA scale {tail!r} in {s!r}; use PATH_OR_HUB_ID[:SCALE], e.g. my.safetensors:0.8"
                ) from None
            source, scale = s, 1.0
        else:
            source = head
    if not source:
        raise UsageError(f"empty LoRA source in {s!r}; use PATH_OR_HUB_ID[:SCALE]")
    if not math.isfinite(scale):
        raise UsageError(f"bad LoRA scale {scale} in {s!r}; it must be a finite number")
    return source, scale


_TARGET = re.compile(r"([a-z][a-z0-9_]*)=(.+)")


def lora_target(spec: str, family) -> tuple[str | None, str]:
    """Split `EXPERT=SOURCE[:SCALE]` into (the denoiser that expert is, `SOURCE[:SCALE]`); without a prefix the
    LoRA goes into every denoiser, (None, spec). The prefix is one of `family.experts` (Wan 2.2: high, low)."""
    spec = spec.strip()
    found = _TARGET.fullmatch(spec)
    if found is None or os.path.exists(spec):  # a file whose name has "=" in it is a file
        return None, spec
    name, rest = found.groups()
    if name not in family.experts:
        known = f"one of {', '.join(e + '=' for e in family.experts)}" if family.experts else "none"
        raise UsageError(f"LoRA {spec}: {name}= is not an expert of {family.label} models ({known}); "
                         "without a prefix a LoRA goes into every denoiser")
    return family.denoisers[family.experts.index(name)], rest


def load_pipeline(
    spec: ModelSpec,
    *,
    dtype: str = "auto",
    device: str = "auto",
    offload: str = "none",
    loras: Sequence[str] = (),
    offline: bool = False,
    quantize: str = "none",
    compile: bool = False,
    warn: Callable[[str], None] = lambda message: None,
) -> Any:
    """Load the family's stock diffusers pipeline (safetensors only), quantized if asked, add LoRAs, place it on the
    device, and compile its blocks if asked."""
    quiet_imports()
    if offload not in OFFLOADS:
        raise UsageError(f"bad --offload {offload!r}; use {', '.join(OFFLOADS)}")
    if dtype != "auto" and dtype not in DTYPES:
        raise UsageError(f"bad --dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    family = families.get(spec.family)
    missing = [module for task, module in family.needs
               if task == spec.task and importlib.util.find_spec(module) is None]
    if missing:
        raise UsageError(f"{spec.alias} loads {family.pipelines[spec.task]}, which needs {', '.join(missing)}: "
                         f"pip install {' '.join(missing)}")
    parsed = [(*parse_lora(rest), target) for target, rest in (lora_target(s, family) for s in loras)]
    if offline:
        set_offline(True)

    import torch

    device = resolve_device(device)
    if offload != "none" and torch.device(device).type == "cpu":
        raise UsageError(f"--offload {offload} moves weights between CPU and an accelerator; there is none on {device}")
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    if torch_dtype == torch.float16 and torch.device(device).type == "cpu":
        warn("float16 on the CPU is slow and some operations may fail; --dtype float32 (the default there) "
             "or bfloat16 is safer")
    quantization.check(quantize, spec, device)

    with quiet_libraries(), warnings.catch_warnings():
        # diffusers marks its optimum-quanto config deprecated; --quantize int8-quanto is what the user asked for.
        warnings.filterwarnings("ignore", message=".*Quanto.* is deprecated", category=FutureWarning)
        pipeline_class = family.pipeline_class(spec.task)
        parts: dict[str, Any] = {}
        if quantization.is_gguf(quantize):
            try:
                parts["transformer"] = quantization.gguf_transformer(quantize, pipeline_class, spec.source,
                                                                     torch_dtype, offline=offline)
            except Exception as e:
                mapped = hub_error(e, quantization.gguf_repo(quantize) or spec.source, offline=offline)
                if mapped is None:
                    raise
                raise mapped from e
        try:
            if quantize != "none" and not quantization.is_gguf(quantize):
                parts["quantization_config"] = quantization.pipeline_config(quantize, pipeline_class, family,
                                                                            torch_dtype)
            pipe = pipeline_class.from_pretrained(
                spec.source, dtype=torch_dtype, use_safetensors=True, local_files_only=offline, **parts,
            )
        except Exception as e:
            mapped = hub_error(e, spec.source, gated=spec.gated, offline=offline)
            if mapped is None:
                raise
            raise mapped from e
        pipe.set_progress_bar_config(disable=True)
        # The scheduler settings the model's distill LoRA was made for (a video model's flow shift, Lightning's).
        overrides = dict(spec.scheduler) | ({} if spec.flow_shift is None else {"flow_shift": spec.flow_shift})
        if overrides:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **overrides)
        if spec.pipeline_config:  # e.g. where Wan 2.2's experts switch, as the model card sets it
            pipe.register_to_config(**dict(spec.pipeline_config))
        if family.vae_dtype is not None:
            pipe.vae.to(dtype=getattr(torch, family.vae_dtype))
        if parsed:
            add_loras(pipe, family, parsed, offline=offline)
    place(pipe, device, offload)
    if compile:
        compiling.compile_pipeline(pipe, family)
    return pipe


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Hide library chatter while loading: transformers' torchvision notes, per-component "Loading ..." bars, and
    diffusers' "couldn't connect, trying the cache" retry, whose outcome hub_error() reports in one line anyway.
    Hub download bars stay on: a first download takes minutes and the user should see it move."""
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    saved = (
        transformers_logging.get_verbosity(), diffusers_logging.get_verbosity(),
        transformers_logging.is_progress_bar_enabled(), diffusers_logging.is_progress_bar_enabled(),
    )
    hub_bars = not hub_utils.are_progress_bars_disabled()
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # also turns off the hub's bars, turned back on below
    diffusers_logging.disable_progress_bar()
    if hub_bars:
        hub_utils.enable_progress_bars()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(saved[0])
        diffusers_logging.set_verbosity(saved[1])
        if saved[2]:
            transformers_logging.enable_progress_bar()
            if not hub_bars:
                hub_utils.disable_progress_bars()
        if saved[3]:
            diffusers_logging.enable_progress_bar()


_TRUNCATED = re.compile(r"truncated because (CLIP|`max_sequence_length`)[^0-9]*(\d+) tokens")
# Library warnings vsf says itself in a line of its own, or that add nothing a user can act on.
_DROPPED = ("Token indices sequence length is longer", "cannot run with `cpu` device")


@contextlib.contextmanager
def library_warnings(warn: Callable[[str], None]) -> Iterator[None]:
    """Route diffusers' and transformers' warnings through `warn`, one line each and each once: a long prompt's
    truncation (which quotes the whole cut text) becomes "prompt truncated to 77 tokens (CLIP)"."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    import diffusers.utils.logging
    import transformers.utils.logging

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.get_logger()  # each adds its own stderr handler on first use; that must happen before the swap
    collector = Collect(logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    saved = [(lg.handlers, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [collector], False
    try:
        yield
    finally:
        for lg, (handlers, propagate) in zip(loggers, saved):
            lg.handlers, lg.propagate = handlers, propagate
        truncated: dict[str, str] = {}
        said: set[str] = set()
        for record in records:
            message = record.getMessage()
            cut = _TRUNCATED.search(message)
            if cut:
                truncated.setdefault("CLIP" if cut[1] == "CLIP" else "T5, max_sequence_length", cut[2])
            elif not any(part in message for part in _DROPPED):
                line = message.strip().splitlines()[0][:200] if message.strip() else ""
                if line and line not in said:
                    said.add(line)
                    warn(line)
        if truncated:
            warn("prompt truncated to " + ", ".join(f"{n} tokens ({which})" for which, n in truncated.items()))


def place(pipe: Any, device: str, offload: str) -> None:
    """Move the pipeline to the device, or let accelerate hooks move each model (or layer) there when it runs."""
    if offload == "none":
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        raise UsageError(f"bad --offload {offload!r}; use {', '.join(OFFLOADS)}")


def add_loras(pipe: Any, family, loras: Iterable[tuple[str, float, str | None]], *, offline: bool = False) -> list[str]:
    """Load each (source, scale, denoiser) LoRA as adapter `lora{i}` and activate them all with their scales;
    returns the adapter names.

    denoiser None loads it into every denoiser the pipeline has (diffusers' `load_lora_weights` also puts text
    encoder weights where they belong); a denoiser name, one of two experts only. diffusers loads into a second
    denoiser with `load_into_<name>=True` (Wan 2.2: `load_into_transformer_2`).
    """
    present = [name for name in family.denoisers if getattr(pipe, name, None) is not None]
    names: list[str] = []
    scales: list[float] = []
    for i, (source, scale, target) in enumerate(loras):
        name = f"lora{i}"
        if target is not None and len(present) < 2:
            raise UsageError(f"LoRA {source}: this {family.label} model has a single {present[0]}, so a LoRA "
                             "prefix that names an expert does not apply; drop it")
        location, kwargs = _lora_location(source, offline=offline)
        for denoiser in [target] if target else present:
            into = {} if denoiser == family.denoisers[0] else {f"load_into_{denoiser}": True}
            try:
                with warnings.catch_warnings():
                    # peft warns on every adapter after the first; several adapters are what --lora asks for.
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    pipe.load_lora_weights(location, adapter_name=name, use_safetensors=True,
                                           local_files_only=offline, **kwargs, **into)
            except VsfError:
                raise
            except Exception as e:
                mapped = hub_error(e, location, gated=False, offline=offline) if not os.path.exists(location) else None
                if mapped is not None:
                    raise mapped from e
                if "PEFT backend is required" in str(e):
                    raise VsfError("LoRA loading needs peft: pip install peft") from e
                raise VsfError(f"cannot load LoRA {source}: {type(e).__name__}: {_first_line(e)}") from e
            held = pipe.get_list_adapters()  # {"transformer": [...], "text_encoder": [...], ...}
            if name not in held.get(denoiser, []) and not any(name in held[part] for part in held
                                                              if part not in family.denoisers):
                raise VsfError(f"LoRA {source} has no weights that match this model's {denoiser} or text encoders")
        names.append(name)
        scales.append(scale)
    if names:
        pipe.set_adapters(names, adapter_weights=scales)
    return names


def check_lora(spec: str, family) -> None:
    """Refuse a malformed `--lora`, an unknown expert prefix, a missing or pickled local file, before anything
    loads (hub ids pass)."""
    _lora_location(parse_lora(lora_target(spec, family)[1])[0], offline=False)


def _lora_location(source: str, *, offline: bool) -> tuple[str, dict[str, str]]:
    """Where load_lora_weights should look: (folder or repo id, {weight_name: file} when a file is named)."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UsageError(f"refusing LoRA {source}: {suffix} files are pickles that can run code; use .safetensors")
    if path.is_file():
        if suffix != ".safetensors":
            raise UsageError(f"LoRA {source} is not a .safetensors file")
        return str(path.parent), {"weight_name": path.name}
    if path.is_dir():
        return str(path), {}
    parts = source.split("/")
    if len(parts) > 2 and suffix == ".safetensors" and looks_like_hub_id("/".join(parts[:2])):
        # org/name/sub/file.safetensors: one file inside a hub repo.
        return "/".join(parts[:2]), {"weight_name": "/".join(parts[2:])}
    if looks_like_hub_id(source):
        if offline:
            # Offline, diffusers cannot list the repo to find the weights file, so name the usual one if it is cached.
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(source, LORA_DEFAULT_FILE), str):
                raise OfflineError(
                    f"LoRA {source} is not in the local cache and --offline is set; "
                    "run once online, or name the file: ORG/NAME/FILE.safetensors"
                )
            return source, {"weight_name": LORA_DEFAULT_FILE}
        return source, {}
    if suffix == ".safetensors":
        raise UsageError(f"LoRA file {source} does not exist")
    raise UsageError(f"LoRA {source} is not a .safetensors file, a folder or a hub id (ORG/NAME)")


def hub_error(e: BaseException, repo_id: str, *, gated: bool = False, offline: bool = False) -> VsfError | None:
    """Map a hub failure anywhere in the exception chain to a one-line error; None when it is not a hub failure.

    diffusers swallows the first hub error (model_info) and retries from the cache, then raises an EnvironmentError
    `from` the original one, so the cause chain is searched, most specific error first.
    """
    from huggingface_hub.utils import httpx  # huggingface_hub 2.x ships httpx2 under this name
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = _chain(e)

    def find(*types: type) -> BaseException | None:
        return next((x for x in chain if isinstance(x, types)), None)

    def status(x: BaseException | None) -> int | None:
        response = getattr(x, "response", None)
        return getattr(response, "status_code", None)

    page = f"https://huggingface.co/{repo_id}"
    gated_error = GatedModelError(
        f"{repo_id} is gated: accept the license at {page}, then run `hf auth login` or set HF_TOKEN"
    )
    if find(GatedRepoError) is not None:
        return gated_error
    not_found = find(RepositoryNotFoundError)
    if not_found is not None:
        # The hub answers 401 for both a missing repo and a private/gated one without a token.
        if gated:
            return gated_error
        hint = "; if it is private or gated, run `hf auth login` or set HF_TOKEN" if status(not_found) == 401 else ""
        return UsageError(f"{repo_id} was not found on the hub ({page}){hint}")
    if find(RevisionNotFoundError) is not None:
        return UsageError(f"{repo_id} has no such revision on the hub")
    http = find(HfHubHTTPError)
    if status(http) in (401, 403):
        return gated_error
    offline_now = offline or _hub_offline()
    if find(OfflineModeIsEnabled) is not None or (offline_now and find(LocalEntryNotFoundError) is not None):
        flag = "--offline" if offline else "HF_HUB_OFFLINE"
        return OfflineError(
            f"{repo_id} is not in the local cache and {flag} is set; run once online or pass a local folder"
        )
    network = find(httpx.TransportError, ConnectionError, TimeoutError)
    if network is not None:
        return VsfError(
            f"cannot reach huggingface.co for {repo_id} ({type(network).__name__}: {_first_line(network)}); "
            "check the network, or use --offline with a cached model"
        )
    if http is not None:
        return VsfError(f"the hub refused {repo_id} (HTTP {status(http)}): {_first_line(http)}")
    if find(EntryNotFoundError) is not None:
        missing = _first_line(find(EntryNotFoundError))
        return UsageError(f"{repo_id} is missing a file it needs ({missing}); is it a diffusers repo?")
    return None


def _hub_offline() -> bool:
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(constants is not None and constants.HF_HUB_OFFLINE)


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    x: BaseException | None = e
    while x is not None and not any(x is s for s in seen):
        seen.append(x)
        x = x.__cause__ or x.__context__
    return seen


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
