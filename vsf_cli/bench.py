"""Per-step cost of each guidance method on random-weight transformers at real model shapes, measured side by side."""

import dataclasses
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace

METHODS = ("none", "vsf", "vsf-dense", "vsf-compat", "nag", "nasa", "cfg")
# Weights as loaded: as built, --quantize's int8 choices through diffusers' configs, or a Q8_0 GGUF file written from
# the random weights and read back with from_single_file.
QUANTIZE = ("none", "int8", "int8-quanto", "gguf")
SINGLE = ("none", "vsf", "nag", "nasa", "cfg")  # no dense-mask step, and compat=reference is SD3's (and FLUX.2's)
VIDEO_SIZE, VIDEO_FRAMES, MAX_FRAMES, MAX_VIDEO_SIDE = (832, 480), 81, 201, 4096
WAN_PROMPT_TOKENS = 100  # a Wan prompt's share of its 512-token context; the rest is the pipeline's zero padding


def _sd3_inputs(config, latent, randn, text, device) -> dict:
    import torch

    return dict(hidden_states=randn(1, config["in_channels"], *latent), encoder_hidden_states=text,
                pooled_projections=randn(1, config["pooled_projection_dim"]),
                timestep=torch.tensor([500.0], device=device))


def _zimage_inputs(config, latent, randn, text, device) -> dict:
    """One (channels, frames, h, w) latent and one caption per item, in lists."""
    import torch

    return dict(x=[randn(config["in_channels"], 1, *latent)], t=torch.tensor([0.5], device=device), cap_feats=[text[0]])


def _flux2_inputs(config, latent, randn, text, device) -> dict:
    """32 latent channels patchified 2x2 into 128, with (t, h, w, l) image ids and (0, 0, 0, k) text ids."""
    import torch

    rows, cols = latent[0] // 2, latent[1] // 2
    image_ids = torch.cartesian_prod(torch.arange(1), torch.arange(rows), torch.arange(cols), torch.arange(1))
    text_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(text.shape[1]))
    return dict(hidden_states=randn(1, rows * cols, config["in_channels"]), encoder_hidden_states=text,
                timestep=torch.tensor([0.5], device=device), img_ids=image_ids[None].to(device),
                txt_ids=text_ids[None].to(device))


def _qwen_inputs(config, latent, randn, text, device) -> dict:
    """2x2 patches packed into 64 channels; one prompt alone, so no text mask."""
    import torch

    rows, cols = latent[0] // 2, latent[1] // 2
    return dict(hidden_states=randn(1, rows * cols, config["in_channels"]), encoder_hidden_states=text,
                timestep=torch.tensor([0.5], device=device), img_shapes=[[(1, rows, cols)]])


def _wan_inputs(config, latent, randn, text, device) -> dict:
    """A (latent frames, h, w) video latent and a prompt zero-padded to the context, as the pipeline pads it."""
    import torch

    text[:, WAN_PROMPT_TOKENS:] = 0
    return dict(hidden_states=randn(1, config["in_channels"], *latent), encoder_hidden_states=text,
                timestep=torch.tensor([500.0], device=device))


@dataclasses.dataclass(frozen=True)
class Shape:
    """A transformer shape to time: its real config and how the family's pipeline feeds it one step."""

    family: str  # the vsf family, whose install and CFG layout the step uses
    transformer: str  # the diffusers class
    config: dict  # the model's `transformer/config.json`; `--blocks` and `--size` shrink it for a CPU
    inputs: Callable[..., dict]  # (config, latent dims, randn, positive text, device) -> one call's inputs
    text_tokens: int  # the positive's tokens in the sequence, as the pipeline pads them
    text_key: str  # the config key of a text token's width
    max_side: int  # the largest side its position table or rotary positions take
    layers: tuple[str, ...] = ("num_layers",)  # the config keys that count main blocks
    methods: tuple[str, ...] = METHODS
    vae_factor: int = 8  # the VAE's spatial factor; sides are multiples of twice it (2x2 patches)
    video: bool = False  # frames pack 4 to a latent frame

    @property
    def multiple(self) -> int:
        return 2 * self.vae_factor


SD3 = dict(attention_head_dim=64, joint_attention_dim=4096, pooled_projection_dim=2048, qk_norm="rms_norm",
           sample_size=128, in_channels=16, out_channels=16, patch_size=2)
WAN22 = dict(attention_head_dim=128, text_dim=4096, freq_dim=256, patch_size=(1, 2, 2), cross_attn_norm=True,
             qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
SHAPES = {
    "sd35-large": Shape(
        "sd3", "SD3Transformer2DModel",
        dict(SD3, num_layers=38, num_attention_heads=38, caption_projection_dim=2432, pos_embed_max_size=192),
        _sd3_inputs, text_tokens=77 + 256, text_key="joint_attention_dim", max_side=16 * 192),
    "sd35-medium": Shape(
        "sd3", "SD3Transformer2DModel",
        dict(SD3, num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=384,
             dual_attention_layers=tuple(range(13))),
        _sd3_inputs, text_tokens=77 + 256, text_key="joint_attention_dim", max_side=16 * 384),
    # A caption of 50 to 64 tokens, padded to 64 (Z-Image keeps no tokenizer padding); 512 rotary patches a side.
    "zimage-turbo": Shape(
        "zimage", "ZImageTransformer2DModel",
        dict(n_layers=30, n_refiner_layers=2, dim=3840, n_heads=30, n_kv_heads=30, cap_feat_dim=2560, in_channels=16,
             all_patch_size=(2,), all_f_patch_size=(1,), axes_dims=[32, 48, 48], axes_lens=[1024, 512, 512],
             rope_theta=256.0, t_scale=1000.0, qk_norm=True),
        _zimage_inputs, text_tokens=64, text_key="cap_feat_dim", max_side=16 * 512, layers=("n_layers",),
        methods=SINGLE),
    # Qwen3's prompt padded to 512 and unmasked; rotary positions have no table, so 4096 caps it at 65,536 tokens.
    "flux2-klein-4b": Shape(
        "flux2_klein", "Flux2Transformer2DModel",
        dict(num_layers=5, num_single_layers=20, num_attention_heads=24, attention_head_dim=128,
             joint_attention_dim=7680, in_channels=128, patch_size=1, mlp_ratio=3.0, timestep_guidance_channels=256,
             axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False),
        _flux2_inputs, text_tokens=512, text_key="joint_attention_dim", max_side=4096,
        layers=("num_layers", "num_single_layers")),
    # A prompt of 64 tokens, unpadded alone; 4096 rotary rows, centred, and text up to 1024 from half a side.
    "qwen-image": Shape(
        "qwenimage", "QwenImageTransformer2DModel",
        dict(num_layers=60, num_attention_heads=24, attention_head_dim=128, joint_attention_dim=3584, in_channels=64,
             out_channels=16, patch_size=2, axes_dims_rope=(16, 56, 56)),
        _qwen_inputs, text_tokens=64, text_key="joint_attention_dim", max_side=16 * 2 * (4096 - 1024),
        methods=SINGLE),
    # Wan 2.2 A14B: each expert has this shape, and one of the two runs per step, so a step costs one expert.
    # No position table: the side's bound is a sanity one.
    "wan22-a14b": Shape(
        "wan", "WanTransformer3DModel",
        dict(WAN22, num_layers=40, num_attention_heads=40, ffn_dim=13824, in_channels=16, out_channels=16),
        _wan_inputs, text_tokens=512, text_key="text_dim", max_side=MAX_VIDEO_SIDE, methods=SINGLE, video=True),
    "wan22-ti2v-5b": Shape(
        "wan", "WanTransformer3DModel",
        dict(WAN22, num_layers=30, num_attention_heads=24, ffn_dim=14336, in_channels=48, out_channels=48),
        _wan_inputs, text_tokens=512, text_key="text_dim", max_side=MAX_VIDEO_SIDE, methods=SINGLE, vae_factor=16,
        video=True),
}


def blocks_in(config: dict, shape: Shape) -> int:
    """The main blocks of a config: e.g. FLUX.2's double- plus single-stream blocks."""
    return sum(config[key] for key in shape.layers)


def _reduced(shape: Shape, blocks: int | None) -> dict:
    """The config with `blocks` main blocks. Z-Image's refiners shrink in proportion, to one at least, so that the
    refiners (which guidance leaves alone) weigh about what they weigh in the full model; FLUX.2's blocks split as
    the model's 5 double to 20 single, with one double block at least: 5 is 1 + 4, 2 is 1 + 1."""
    config = dict(shape.config)
    if not blocks:
        return config
    if len(shape.layers) == 2:
        first, second = shape.layers
        double = max(1, round(blocks * config[first] / blocks_in(config, shape)))
        return {**config, first: double, second: blocks - double}
    key = shape.layers[0]
    if "dual_attention_layers" in config:
        config["dual_attention_layers"] = tuple(i for i in config["dual_attention_layers"] if i < blocks)
    if "n_refiner_layers" in config:
        config["n_refiner_layers"] = max(1, round(config["n_refiner_layers"] * blocks / config[key]))
    return {**config, key: blocks}


def _quantized(transformer, shape: Shape, value: str, dtype, device: str):
    """The transformer saved and loaded again through diffusers' quantization, as `--quantize` loads a model."""
    import tempfile

    import diffusers

    from vsf_cli.models import quantize
    from vsf_cli.models.loading import quiet_libraries

    model_class = getattr(diffusers, shape.transformer)
    with tempfile.TemporaryDirectory() as folder, quiet_libraries():
        if value == "gguf":
            transformer.save_config(folder)
            path = quantize.write_gguf(transformer, f"{folder}/transformer.gguf")
            loaded = model_class.from_single_file(
                path, config=folder, dtype=dtype, local_files_only=True,
                quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=dtype))
        else:
            transformer.save_pretrained(folder)
            loaded = model_class.from_pretrained(folder, dtype=dtype,
                                                 quantization_config=quantize.configs(value, dtype)[0])
    return loaded.to(device).eval()


def weights_mib(module) -> float:
    """The bytes a model's weights take, quantized ones as stored (a quantized tensor's parts, counted once)."""
    seen: dict[int, int] = {}

    def count(t) -> None:
        if hasattr(t, "__tensor_flatten__"):  # torchao's and quanto's tensors hold their data in inner tensors
            for name in t.__tensor_flatten__()[0]:
                count(getattr(t, name))
            return
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()

    for t in [*module.parameters(), *module.buffers()]:
        count(t)
    return sum(seen.values()) / 2**20


def step_mib(call) -> float:
    """The peak of the tensors one call makes and holds at once (activations and temporaries, not the weights),
    counted op by op: the same measure on every device, where CUDA's allocator statistics exist only on CUDA."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Live(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = 0
            self.held: set[int] = set()

        def free(self, key: int, size: int) -> None:
            self.held.discard(key)
            self.live -= size

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # A view or an in-place result shares an input's memory (a weight's transpose): nothing new.
            inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs))
                      if type(t) in (torch.Tensor, torch.nn.Parameter)}
            for t in tree_leaves(out):
                if type(t) is torch.Tensor and t.device.type != "meta":
                    storage = t.untyped_storage()
                    key = id(storage)
                    if key not in self.held and key not in inputs:
                        self.held.add(key)
                        self.live += storage.nbytes()
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(storage, self.free, key, storage.nbytes())
            return out

    with Live() as live:
        call()
    return live.peak / 2**20


def _kernel_method(method: str):
    """The guidance method a bench row names, at its defaults."""
    from vsf_cli import guidance

    return guidance.create("vsf", compat="reference") if method == "vsf-compat" else guidance.create(method)


def run(model: str = "sd35-large", *, blocks: int | None = None, size: tuple[int, int] = (1024, 1024),
        frames: int | None = None, neg_tokens: int = 8, steps: int = 8, repeats: int = 5, warmup: int = 1,
        methods=METHODS, device: str = "auto", dtype: str = "auto", quantize: str = "none") -> dict:
    """Time one transformer step per method (median over interleaved repeats) and report ratios to `none`, with
    the memory each step makes beside the weights'.

    `size` is (width, height); `frames` (video shapes only) the clip length, 4k+1; `quantize` one of QUANTIZE.
    """
    import diffusers
    import torch

    from vsf_cli.guidance.joint import install_joint
    from vsf_cli.guidance.oracle import vsf_joint_dense
    from vsf_cli.models import families
    from vsf_cli.models.loading import quiet_imports, quiet_libraries, resolve_device, resolve_dtype

    quiet_imports()
    shape = SHAPES[model]
    device = resolve_device(device)
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    family = families.get(shape.family)
    config = _reduced(shape, blocks)
    torch.manual_seed(0)
    # `.to(dtype)` on a model diffusers built would log "modules that should be kept in float32: []": there are none.
    with quiet_libraries():
        transformer = getattr(diffusers, shape.transformer)(**config).to(device, torch_dtype).eval()
    if quantize != "none":
        transformer = _quantized(transformer, shape, quantize, torch_dtype, device)
    gen = torch.Generator().manual_seed(0)

    def randn(*dims):
        return torch.randn(*dims, generator=gen).to(device, torch_dtype)

    width, height = size
    factor, n_text = shape.vae_factor, shape.text_tokens
    latent = (height // factor, width // factor)
    if shape.video:
        latent = ((frames - 1) // 4 + 1, *latent)
    text_width = config[shape.text_key]
    inputs = shape.inputs(config, latent, randn, randn(1, n_text, text_width), device)
    cfg_inputs = {k: v + v if isinstance(v, list) else torch.cat([v, v]) for k, v in inputs.items()}
    pipe = SimpleNamespace(transformer=transformer)

    def negative_family(padded):
        n = n_text if padded else neg_tokens
        # The family with random negative tokens: nothing here loads text encoders.
        return dataclasses.replace(family, encode_negative=lambda pipe, text, padded: randn(1, n, text_width))

    def step(method):
        if method == "cfg" and family.cfg_separate_pass:  # the pipeline runs the unconditional pass as its own call
            return lambda: (transformer(**inputs), transformer(**inputs))
        kwargs = cfg_inputs if method == "cfg" else inputs
        if method in ("none", "cfg"):
            return lambda: transformer(**kwargs)
        if method == "vsf-dense":  # the seed code's way: one SDPA with a dense float mask
            vsf = _kernel_method("vsf")
            installed = install_joint(pipe, negative_family(False), ["negative"],
                                      partial(vsf_joint_dense, scale=vsf.scale, offset=vsf.offset, exact=False))
        else:
            guide = _kernel_method(method)
            installed = guide.install_family(pipe, negative_family(guide.options().get("padded", False)),
                                             ["negative"])

        def call():
            return transformer(**inputs)
        call.installed = installed
        return call

    times = {m: [] for m in methods}
    peak = {}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        for r in range(warmup + repeats):  # interleaved, so drift hits every method alike
            for method in methods:
                call = step(method)
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                sync()
                started = time.perf_counter()
                call()
                sync()
                if r >= warmup:
                    times[method].append(time.perf_counter() - started)
                if device.startswith("cuda"):
                    peak[method] = torch.cuda.max_memory_allocated() / 2**20
                if hasattr(call, "installed"):
                    call.installed.remove()
        made = {}
        for method in methods:  # untimed: counting slows every op
            call = step(method)
            made[method] = step_mib(call)
            if hasattr(call, "installed"):
                call.installed.remove()
    base = statistics.median(times["none"]) if "none" in times else None
    weights = weights_mib(transformer)
    rows = []
    for method in methods:
        median = statistics.median(times[method])
        # Each round's time over `none`'s in the same round: on a shared machine, load that comes and goes
        # between rounds cancels out of this ratio, where it widens the spread of the medians.
        paired = [t / n for t, n in zip(times[method], times["none"])] if base else None
        rows.append({"method": method, "step_ms": round(1000 * median, 2),
                     "spread_ms": [round(1000 * min(times[method]), 2), round(1000 * max(times[method]), 2)],
                     "image_s": round(steps * median, 3),
                     "ratio": round(median / base, 3) if base else None,
                     "paired_ratio": round(statistics.median(paired), 3) if paired else None,
                     "step_mib": round(made[method], 1),
                     # what the step makes beyond the unguided step's, as a share of the weights
                     "over_none_pct": (round(100 * (made[method] - made["none"]) / weights, 3)
                                       if "none" in made and weights else None),
                     "peak_mib": round(peak[method], 1) if method in peak else None})
    from vsf_cli.guidance.attention import attention_lse

    split = {}
    if len(shape.layers) == 2:
        split = {"blocks_split": " + ".join(f"{config[key]} {kind}"
                                            for key, kind in zip(shape.layers, ("double", "single")))}
    tokens = math.prod(latent[:-2]) * (latent[-2] // 2) * (latent[-1] // 2)  # 2x2 patches
    if shape.video:
        layout = {"size": f"{width}x{height}", "frames": frames, "image_tokens": tokens}
    else:
        layout = {"size": width if width == height else f"{width}x{height}", "image_tokens": tokens}
    return {
        "model": model, "blocks": blocks_in(config, shape), **split, **layout, "text_tokens": n_text,
        "negative_tokens": neg_tokens, "steps": steps, "repeats": repeats, "device": _device_name(device),
        "dtype": str(torch_dtype).removeprefix("torch."), "quantize": quantize,
        "weights_mib": round(weights, 1),
        # Wan's kernels are plain SDPA calls, which name no backend; the joint ones use attention_lse.
        "attention_backend": None if family.attention == "cross" else getattr(attention_lse, "backend", None),
        "versions": _versions(), "rows": rows,
    }


def attention_only(image_tokens: int = 4096, heads: int = 38, neg_tokens: int = 8, repeats: int = 5,
                   device: str = "auto", dtype: str = "auto") -> list[dict]:
    """One joint-attention call at full SD3.5-Large shapes, for where the per-step overhead comes from."""
    import torch

    from vsf_cli.guidance.attention import vsf_joint
    from vsf_cli.guidance.oracle import vsf_joint_dense
    from vsf_cli.models.loading import resolve_device, resolve_dtype

    device = resolve_device(device)
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    gen = torch.Generator().manual_seed(0)

    def group(n):
        return tuple(torch.randn(1, heads, n, 64, generator=gen).to(device, torch_dtype) for _ in range(3))

    image, positive, negative = group(image_tokens), group(SHAPES["sd35-large"].text_tokens), group(neg_tokens)
    calls = {
        "none": lambda: torch.nn.functional.scaled_dot_product_attention(
            *(torch.cat([a, b], 2) for a, b in zip(image, positive))),
        "vsf": lambda: vsf_joint(image, positive, negative, scale=3.5, offset=0.1),
        "vsf-dense": lambda: vsf_joint_dense(image, positive, negative, scale=3.5, offset=0.1, exact=False),
    }
    return _time_calls(calls, repeats, device)


def cross_attention_only(image_tokens: int = 32760, heads: int = 12, head_dim: int = 128, context: int = 512,
                         neg_tokens: int = 8, repeats: int = 5, device: str = "auto", dtype: str = "auto") -> list[dict]:
    """One Wan cross-attention call at Wan 2.1 1.3B shapes (480x832, 81 frames: 32,760 image queries, 512 text keys).

    `vsf-dense` is the seed code's way: one SDPA with an (n_image x 512) float mask and the flip in the values.
    """
    import torch
    import torch.nn.functional as F

    from vsf_cli.guidance.attention import vsf_cross
    from vsf_cli.models.loading import resolve_device, resolve_dtype

    device = resolve_device(device)
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen).to(device, torch_dtype)
               for n in (image_tokens, context, context))
    n = context - neg_tokens
    mask = torch.zeros(1, 1, image_tokens, context, device=device, dtype=torch_dtype)
    mask[..., n:] = -0.2
    flip = torch.ones(context, 1, device=device, dtype=torch_dtype)
    flip[n:] = -1.5
    calls = {
        "none": lambda: F.scaled_dot_product_attention(q, k, v),
        "vsf": lambda: vsf_cross(q, (k[:, :, :n], v[:, :, :n]), (k[:, :, n:], v[:, :, n:]), scale=1.5, offset=0.2),
        "vsf-dense": lambda: F.scaled_dot_product_attention(q, k, v * flip, attn_mask=mask),
    }
    return _time_calls(calls, repeats, device)


def _time_calls(calls: dict, repeats: int, device: str) -> list[dict]:
    """Median time of each call over interleaved repeats (after one warm-up round), and its ratio to the first."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = {name: [] for name in calls}
    for r in range(repeats + 1):
        for name, call in calls.items():
            sync()
            started = time.perf_counter()
            call()
            sync()
            if r:
                times[name].append(time.perf_counter() - started)
    base = statistics.median(next(iter(times.values())))
    return [{"method": name, "ms": round(1000 * statistics.median(t), 2), "ratio": round(statistics.median(t) / base, 3)}
            for name, t in times.items()]


def cold_start(repeats: int = 5) -> float:
    """Median seconds for `vsf --help` in a fresh interpreter (it must not import torch or diffusers)."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vsf_cli", "--help"], capture_output=True, check=True)
        runs.append(time.perf_counter() - started)
    return round(statistics.median(runs), 3)


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _versions() -> dict:
    import diffusers
    import torch

    from vsf_cli import __version__

    return {"vsf": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version()}


def table(result: dict) -> str:
    """A markdown table of one run, with the setup written next to the numbers."""
    if "frames" in result:  # video: the negative sits inside the text context (VSF) or after it (NAG, NASA)
        shape = (f"{result['size']}, {result['frames']} frames ({result['image_tokens']} video tokens, a "
                 f"{result['text_tokens']}-token text context, {result['negative_tokens']} negative tokens)")
    else:
        side = f"{result['size']}²" if isinstance(result["size"], int) else result["size"]
        shape = (f"{side} ({result['image_tokens']} image + {result['text_tokens']} text + "
                 f"{result['negative_tokens']} negative tokens)")
    backend = f", attention with lse: {result['attention_backend']}" if result["attention_backend"] else ""
    split = f" ({result['blocks_split']})" if "blocks_split" in result else ""
    quantized = result.get("quantize", "none")
    weights = (f"{result['dtype']} weights" if quantized == "none"
               else f"{quantized} weights computing in {result['dtype']}")
    lines = [f"{result['model']}, {result['blocks']} blocks{split}, {shape}, {weights} ({result['weights_mib']} MiB) "
             f"on {result['device']}{backend}; " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
             "", "| method | ms / step (median) | min–max | × none | × none, paired by round | step MiB | "
             "step MiB over none, % of weights | CUDA peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        over = "—" if row["over_none_pct"] is None else f"{row['over_none_pct']:.2f}"
        lines.append(f"| {row['method']} | {row['step_ms']} | {row['spread_ms'][0]}–{row['spread_ms'][1]} | "
                     f"{row['ratio']} | {row['paired_ratio']} | {row['step_mib']} | {over} | "
                     f"{row['peak_mib'] if row['peak_mib'] is not None else '—'} |")
    return "\n".join(lines)


# Ranges of the command-line options, shared by `python -m vsf_cli.bench` and `vsf bench`.
MAX_NEG_TOKENS = 512
MAX_REPEATS = 1000
MAX_WARMUP = 100


def check_options(model: str, blocks: int | None, size: str | int | None, neg_tokens: int, repeats: int,
                  warmup: int, methods: str | None, frames: int | None = None,
                  quantize: str = "none") -> tuple[tuple[str, ...], tuple, int]:
    """Refuse out-of-range options with one line before anything heavy is imported.

    Returns the method tuple (None: all the shape takes), (width, height) from `size` ("N" or "WxH"; None: 1024²,
    or 832x480 for video) and the frame count (video shapes; None: 81).
    """
    from vsf_cli.errors import UsageError

    if model not in SHAPES:
        raise UsageError(f"--model {model!r}: choose from {', '.join(SHAPES)}")
    shape = SHAPES[model]
    layers = blocks_in(shape.config, shape)
    if blocks is not None and not 1 <= blocks <= layers:
        raise UsageError(f"--blocks {blocks}: {model} has 1 to {layers} blocks")
    multiple, largest = shape.multiple, shape.max_side
    sides = _sides(size, VIDEO_SIZE if shape.video else (1024, 1024))
    if sides is None or not all(multiple <= side <= largest and side % multiple == 0 for side in sides):
        raise UsageError(f"--size {size}: a multiple of {multiple} from {multiple} to {largest} for {model} "
                         "(N, or WxH)")
    if not shape.video and frames is not None:
        raise UsageError(f"--frames is for the video shapes ({', '.join(m for m, s in SHAPES.items() if s.video)}); "
                         f"{model} makes images")
    frames = VIDEO_FRAMES if shape.video and frames is None else frames
    if shape.video and not (1 <= frames <= MAX_FRAMES and (frames - 1) % 4 == 0):
        raise UsageError(f"--frames {frames}: 4k+1 from 1 to {MAX_FRAMES} (Wan's VAE packs 4 frames per latent)")
    if not 1 <= neg_tokens <= MAX_NEG_TOKENS:
        raise UsageError(f"--neg-tokens {neg_tokens}: 1 to {MAX_NEG_TOKENS}")
    if not 1 <= repeats <= MAX_REPEATS:
        raise UsageError(f"--repeats {repeats}: 1 to {MAX_REPEATS}")
    if not 0 <= warmup <= MAX_WARMUP:
        raise UsageError(f"--warmup {warmup}: 0 to {MAX_WARMUP}")
    if quantize not in QUANTIZE:
        raise UsageError(f"--quantize {quantize!r}: one of {', '.join(QUANTIZE)}")
    if quantize != "none":
        from vsf_cli.models import quantize as quantization

        choice = quantization.CHOICES.get(quantize)
        quantization.require(quantize, *((choice.backend, choice.pip) if choice else quantization.GGUF_PACKAGE))
    if methods is None:
        return shape.methods, sides, frames
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise UsageError(f"--methods {methods!r}: a comma-separated subset of {','.join(METHODS)}")
    if any(m not in shape.methods for m in chosen):
        raise UsageError(f"--methods {methods!r}: {model} takes {','.join(shape.methods)}")
    return chosen, sides, frames


def _sides(size: str | int | None, default: tuple[int, int]) -> tuple[int, int] | None:
    """(width, height) from "N", N or "WxH"; None when it is neither."""
    if size is None:
        return default
    parts = str(size).lower().split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        return None
    width, height = (int(p) for p in parts) if len(parts) == 2 else (int(parts[0]),) * 2
    return width, height


def benchmark(model: str = "sd35-large", *, blocks: int | None = None, size: str | int | None = None,
              frames: int | None = None, neg_tokens: int = 8, repeats: int = 5, warmup: int = 1,
              methods: str | None = None, device: str = "auto", dtype: str = "auto", attention: bool = False,
              quantize: str = "none") -> dict:
    """The whole benchmark behind both command lines: per-step rows, the cold start and, optionally, single calls."""
    chosen, sides, frames = check_options(model, blocks, size, neg_tokens, repeats, warmup, methods, frames, quantize)
    result = run(model, blocks=blocks, size=sides, frames=frames, neg_tokens=neg_tokens, repeats=repeats,
                 warmup=warmup, methods=chosen, device=device, dtype=dtype, quantize=quantize)
    result["cold_start_help_s"] = cold_start()
    if attention:
        result["attention_only"] = attention_only(device=device, dtype=dtype)
        result["cross_attention_only"] = cross_attention_only(device=device, dtype=dtype)
    return result


def report(result: dict) -> str:
    """The human-readable report: the table, the cold start, and the single-call rows if measured."""
    text = table(result) + f"\n\n`vsf --help` cold start: {result['cold_start_help_s']} s"
    for kind in ("attention_only", "cross_attention_only"):
        for row in result.get(kind, []):
            text += f"\n{kind.replace('_', ' ')}, {row['method']}: {row['ms']} ms ({row['ratio']}x)"
    return text


def main(argv: list[str] | None = None) -> None:
    import argparse

    from vsf_cli.errors import UsageError

    parser = argparse.ArgumentParser(prog="python -m vsf_cli.bench", description=__doc__)
    parser.add_argument("--model", choices=sorted(SHAPES), default="sd35-large", help="transformer shape to build")
    parser.add_argument("--blocks", type=int, help="keep only this many blocks (CPU: 2-4)")
    parser.add_argument("--size", help="N or WxH in pixels: multiples of 16 (wan22-ti2v-5b: 32); default 1024, "
                        "832x480 for Wan (CPU: 512, or fewer --frames)")
    parser.add_argument("--frames", type=int, help="video shapes: frames, 4k+1 (default 81; CPU: 1-9)")
    parser.add_argument("--neg-tokens", type=int, default=8, help=f"unpadded negative length (VSF), 1-{MAX_NEG_TOKENS}")
    parser.add_argument("--repeats", type=int, default=5, help=f"timed rounds, 1-{MAX_REPEATS}")
    parser.add_argument("--warmup", type=int, default=1, help=f"untimed rounds first, 0-{MAX_WARMUP}")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all the "
                        "model takes)")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE,
                        help="weights as built, torchao or quanto int8, or a Q8_0 GGUF file written from them")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--attention", action="store_true",
                        help="also time one attention call at full SD3.5-L (joint) and Wan 1.3B (cross) shapes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        result = benchmark(args.model, blocks=args.blocks, size=args.size, frames=args.frames,
                           neg_tokens=args.neg_tokens, repeats=args.repeats, warmup=args.warmup, methods=args.methods,
                           device=args.device, dtype=args.dtype, attention=args.attention, quantize=args.quantize)
    except UsageError as e:
        parser.error(str(e))
    print(json.dumps(result) if args.json else report(result))


if __name__ == "__main__":
    main()
