"""Per-step cost of each guidance method on random-weight transformers at real model shapes, measured side by side."""

import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from functools import partial
from types import SimpleNamespace

# Real configs (diffusers `transformer/config.json` of each model); `--blocks` and `--size` shrink them for a CPU.
CONFIGS = {
    "sd35-large": dict(num_layers=38, num_attention_heads=38, attention_head_dim=64, joint_attention_dim=4096,
                       caption_projection_dim=2432, pooled_projection_dim=2048, pos_embed_max_size=192,
                       qk_norm="rms_norm", sample_size=128, in_channels=16, out_channels=16, patch_size=2),
    "sd35-medium": dict(num_layers=24, num_attention_heads=24, attention_head_dim=64, joint_attention_dim=4096,
                        caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                        qk_norm="rms_norm", sample_size=128, in_channels=16, out_channels=16, patch_size=2,
                        dual_attention_layers=tuple(range(13))),
    "zimage-turbo": dict(n_layers=30, n_refiner_layers=2, dim=3840, n_heads=30, n_kv_heads=30, cap_feat_dim=2560,
                         in_channels=16, all_patch_size=(2,), all_f_patch_size=(1,), axes_dims=[32, 48, 48],
                         axes_lens=[1024, 512, 512], rope_theta=256.0, t_scale=1000.0, qk_norm=True),
    "flux2-klein-4b": dict(num_layers=5, num_single_layers=20, num_attention_heads=24, attention_head_dim=128,
                           joint_attention_dim=7680, in_channels=128, patch_size=1, mlp_ratio=3.0,
                           timestep_guidance_channels=256, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000,
                           guidance_embeds=False),
    "qwen-image": dict(num_layers=60, num_attention_heads=24, attention_head_dim=128, joint_attention_dim=3584,
                       in_channels=64, out_channels=16, patch_size=2, axes_dims_rope=(16, 56, 56)),
}
FAMILIES = {"sd35-large": "sd3", "sd35-medium": "sd3", "zimage-turbo": "zimage", "flux2-klein-4b": "flux2_klein",
            "qwen-image": "qwenimage"}
METHODS = ("none", "vsf", "vsf-dense", "vsf-compat", "nag", "nasa", "cfg")
# The positive's tokens in the sequence: SD3's CLIP 77 + T5 256; a Z-Image caption of 50 to 64 tokens, padded to 64
# (it keeps no tokenizer padding); FLUX.2's Qwen3 prompt, padded to 512 and unmasked; a Qwen-Image prompt of 64
# tokens (unpadded alone).
POSITIVE_TOKENS = {"sd3": 77 + 256, "zimage": 64, "flux2_klein": 512, "qwenimage": 64}
SINGLE = ("none", "vsf", "nag", "nasa", "cfg")  # compat=reference is SD3's
SHAPE_METHODS = {"sd3": METHODS, "zimage": SINGLE, "flux2_klein": METHODS, "qwenimage": SINGLE}
FLUX2_MAX_SIZE = 4096  # FLUX.2's rotary positions have no table; this caps the shape at 65,536 image tokens


def layers_key(model: str) -> str:
    return "n_layers" if FAMILIES[model] == "zimage" else "num_layers"


def blocks_in(model: str, config: dict) -> int:
    """The main blocks of a config: SD3's and Z-Image's layers, FLUX.2's double- plus single-stream blocks."""
    if FAMILIES[model] == "flux2_klein":
        return config["num_layers"] + config["num_single_layers"]
    return config[layers_key(model)]


def max_size(model: str) -> int:
    """The largest image side the shape takes: SD3's position table, Z-Image's rotary table (512 patches a side),
    Qwen-Image's (4096 rows: an image's positions are centred, and text up to 1024 tokens starts at half a side)."""
    config = CONFIGS[model]
    if FAMILIES[model] == "flux2_klein":
        return FLUX2_MAX_SIZE
    if FAMILIES[model] == "qwenimage":
        return 16 * 2 * (4096 - 1024)
    return 16 * (config["axes_lens"][1] if "axes_lens" in config else config["pos_embed_max_size"])


def _kernels(method: str):
    """(kernel, install_joint options) for the methods that patch joint attention, at their defaults."""
    from vsf_cli import guidance
    from vsf_cli.guidance.oracle import vsf_joint_dense

    if method == "vsf-dense":  # the seed code's way: one SDPA with a dense float mask
        vsf = guidance.create("vsf")
        return partial(vsf_joint_dense, scale=vsf.scale, offset=vsf.offset, exact=False), {}
    guide = guidance.create("vsf", compat="reference") if method == "vsf-compat" else guidance.create(method)
    return guide.kernel(), guide.options()


def run(model: str = "sd35-large", *, blocks: int | None = None, size: int = 1024, neg_tokens: int = 8,
        steps: int = 8, repeats: int = 5, warmup: int = 1, methods=METHODS, device: str = "auto",
        dtype: str = "auto") -> dict:
    """Time one transformer step per method (median over interleaved repeats) and report ratios to `none`."""
    import torch

    from vsf_cli.guidance.joint import install_joint
    from vsf_cli.models import families
    from vsf_cli.models.loading import quiet_libraries, resolve_device, resolve_dtype

    device = resolve_device(device)
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    family = families.get(FAMILIES[model])
    config = _reduced(model, blocks)
    torch.manual_seed(0)
    # `.to(dtype)` on a model diffusers built would log "modules that should be kept in float32: []": there are none.
    with quiet_libraries():
        transformer = _transformer_class(family.name)(**config).to(device, torch_dtype).eval()
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device, torch_dtype)

    n_text, width = POSITIVE_TOKENS[family.name], _text_width(family.name, config)
    inputs = _inputs(family.name, size, randn, n_text, width, device)
    cfg_inputs = {k: v + v if isinstance(v, list) else torch.cat([v, v]) for k, v in inputs.items()}
    pipe = SimpleNamespace(transformer=transformer)

    def negative_family(padded):
        n = n_text if padded else neg_tokens
        # The family with random negative tokens: nothing here loads text encoders.
        return dataclasses.replace(family, encode_negative=lambda pipe, text, padded: randn(1, n, width))

    def step(method):
        if method == "cfg" and family.cfg_separate_pass:  # the pipeline runs the unconditional pass as its own call
            return lambda: (transformer(**inputs), transformer(**inputs))
        kwargs = cfg_inputs if method == "cfg" else inputs
        if method in ("none", "cfg"):
            return lambda: transformer(**kwargs)
        kernel, options = _kernels(method)
        installed = install_joint(pipe, negative_family(options.get("padded", False)), ["negative"], kernel, **options)

        def call():
            return transformer(**kwargs)
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
    base = statistics.median(times["none"]) if "none" in times else None
    rows = []
    for method in methods:
        median = statistics.median(times[method])
        rows.append({"method": method, "step_ms": round(1000 * median, 2),
                     "spread_ms": [round(1000 * min(times[method]), 2), round(1000 * max(times[method]), 2)],
                     "image_s": round(steps * median, 3),
                     "ratio": round(median / base, 3) if base else None,
                     "peak_mib": round(peak[method], 1) if method in peak else None})
    from vsf_cli.guidance.attention import attention_lse

    split = ({"blocks_split": f"{config['num_layers']} double + {config['num_single_layers']} single"}
             if family.name == "flux2_klein" else {})
    return {
        "model": model, "blocks": blocks_in(model, config), **split, "size": size, "image_tokens": (size // 16) ** 2,
        "text_tokens": n_text, "negative_tokens": neg_tokens, "steps": steps, "repeats": repeats,
        "device": _device_name(device), "dtype": str(torch_dtype).removeprefix("torch."),
        "attention_backend": getattr(attention_lse, "backend", None), "versions": _versions(), "rows": rows,
    }


def _reduced(model: str, blocks: int | None) -> dict:
    """The model's config with `blocks` main blocks; Z-Image's refiners shrink in proportion, to one at least,
    so that the refiners (which guidance leaves alone) weigh about what they weigh in the full model. FLUX.2's
    blocks split as the model's 5 double to 20 single, with one double block at least: 5 is 1 + 4, 2 is 1 + 1."""
    config = dict(CONFIGS[model])
    if not blocks:
        return config
    if FAMILIES[model] == "flux2_klein":
        double = max(1, round(blocks * config["num_layers"] / blocks_in(model, config)))
        return {**config, "num_layers": double, "num_single_layers": blocks - double}
    key = layers_key(model)
    if "dual_attention_layers" in config:
        config["dual_attention_layers"] = tuple(i for i in config["dual_attention_layers"] if i < blocks)
    if "n_refiner_layers" in config:
        config["n_refiner_layers"] = max(1, round(config["n_refiner_layers"] * blocks / config[key]))
    return {**config, key: blocks}


def _transformer_class(family: str):
    import diffusers

    return {"sd3": diffusers.SD3Transformer2DModel, "zimage": diffusers.ZImageTransformer2DModel,
            "flux2_klein": diffusers.Flux2Transformer2DModel, "qwenimage": diffusers.QwenImageTransformer2DModel}[family]


def _text_width(family: str, config: dict) -> int:
    return config["cap_feat_dim"] if family == "zimage" else config["joint_attention_dim"]


def _inputs(family: str, size: int, randn, n_text: int, width: int, device) -> dict:
    """One denoiser call's inputs for a batch of one, as the family's pipeline makes them (8x VAE, 16 channels)."""
    import torch

    latent = size // 8
    if family == "zimage":  # one (channels, frames, h, w) latent and one caption per item, in lists
        return dict(x=[randn(16, 1, latent, latent)], t=torch.tensor([0.5], device=device), cap_feats=[randn(n_text, width)])
    if family == "flux2_klein":  # 32 latent channels patchified 2x2 into 128, with (t, h, w, l) and (0, 0, 0, k) ids
        side = size // 16
        image_ids = torch.cartesian_prod(torch.arange(1), torch.arange(side), torch.arange(side), torch.arange(1))
        text_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(n_text))
        return dict(hidden_states=randn(1, side * side, 128), encoder_hidden_states=randn(1, n_text, width),
                    timestep=torch.tensor([0.5], device=device), img_ids=image_ids[None].to(device),
                    txt_ids=text_ids[None].to(device))
    if family == "qwenimage":  # 2x2 patches packed into 64 channels; one prompt alone, so no text mask
        side = latent // 2
        return dict(hidden_states=randn(1, side * side, 64), encoder_hidden_states=randn(1, n_text, width),
                    timestep=torch.tensor([0.5], device=device), img_shapes=[[(1, side, side)]])
    return dict(hidden_states=randn(1, 16, latent, latent), encoder_hidden_states=randn(1, n_text, width),
                pooled_projections=randn(1, 2048), timestep=torch.tensor([500.0], device=device))


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

    image, positive, negative = group(image_tokens), group(POSITIVE_TOKENS["sd3"]), group(neg_tokens)
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
    split = f" ({result['blocks_split']})" if "blocks_split" in result else ""
    lines = [f"{result['model']}, {result['blocks']} blocks{split}, {result['size']}² ({result['image_tokens']} image + "
             f"{result['text_tokens']} text + {result['negative_tokens']} negative tokens), {result['dtype']} on "
             f"{result['device']}, attention with lse: {result['attention_backend']}; "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
             "", "| method | ms / step (median) | min–max | × none | peak MiB |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['method']} | {row['step_ms']} | {row['spread_ms'][0]}–{row['spread_ms'][1]} | "
                     f"{row['ratio']} | {row['peak_mib'] if row['peak_mib'] is not None else '—'} |")
    return "\n".join(lines)


# Ranges of the command-line options, shared by `python -m vsf_cli.bench` and `vsf bench`.
MAX_NEG_TOKENS = 512
MAX_REPEATS = 1000
MAX_WARMUP = 100


def check_options(model: str, blocks: int | None, size: int, neg_tokens: int, repeats: int, warmup: int,
                  methods: str | None) -> tuple[str, ...]:
    """Refuse out-of-range options with one line before anything heavy is imported; returns the method tuple."""
    from vsf_cli.errors import UsageError

    if model not in CONFIGS:
        raise UsageError(f"--model {model!r}: choose from {', '.join(CONFIGS)}")
    layers, largest = blocks_in(model, CONFIGS[model]), max_size(model)
    if blocks is not None and not 1 <= blocks <= layers:
        raise UsageError(f"--blocks {blocks}: {model} has 1 to {layers} blocks")
    if not 16 <= size <= largest or size % 16:
        raise UsageError(f"--size {size}: a multiple of 16 from 16 to {largest} for {model}")
    if not 1 <= neg_tokens <= MAX_NEG_TOKENS:
        raise UsageError(f"--neg-tokens {neg_tokens}: 1 to {MAX_NEG_TOKENS}")
    if not 1 <= repeats <= MAX_REPEATS:
        raise UsageError(f"--repeats {repeats}: 1 to {MAX_REPEATS}")
    if not 0 <= warmup <= MAX_WARMUP:
        raise UsageError(f"--warmup {warmup}: 0 to {MAX_WARMUP}")
    offered = SHAPE_METHODS[FAMILIES[model]]
    if methods is None:
        return offered
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise UsageError(f"--methods {methods!r}: a comma-separated subset of {','.join(METHODS)}")
    if any(m not in offered for m in chosen):
        raise UsageError(f"--methods {methods!r}: {model} takes {','.join(offered)}")
    return chosen


def benchmark(model: str = "sd35-large", *, blocks: int | None = None, size: int = 1024, neg_tokens: int = 8,
              repeats: int = 5, warmup: int = 1, methods: str | None = None, device: str = "auto",
              dtype: str = "auto", attention: bool = False) -> dict:
    """The whole benchmark behind both command lines: per-step rows, the cold start and, optionally, single calls."""
    chosen = check_options(model, blocks, size, neg_tokens, repeats, warmup, methods)
    result = run(model, blocks=blocks, size=size, neg_tokens=neg_tokens, repeats=repeats, warmup=warmup,
                 methods=chosen, device=device, dtype=dtype)
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
    parser.add_argument("--model", choices=sorted(CONFIGS), default="sd35-large", help="transformer shape to build")
    parser.add_argument("--blocks", type=int, help="keep only this many blocks (CPU: 2-4)")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels, a multiple of 16 (CPU: 512)")
    parser.add_argument("--neg-tokens", type=int, default=8, help=f"unpadded negative length (VSF), 1-{MAX_NEG_TOKENS}")
    parser.add_argument("--repeats", type=int, default=5, help=f"timed rounds, 1-{MAX_REPEATS}")
    parser.add_argument("--warmup", type=int, default=1, help=f"untimed rounds first, 0-{MAX_WARMUP}")
    parser.add_argument("--methods", help="comma-separated subset of " + ",".join(METHODS) + " (default: all the model takes)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--attention", action="store_true",
                        help="also time one attention call at full SD3.5-L (joint) and Wan 1.3B (cross) shapes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        result = benchmark(args.model, blocks=args.blocks, size=args.size, neg_tokens=args.neg_tokens,
                           repeats=args.repeats, warmup=args.warmup, methods=args.methods, device=args.device,
                           dtype=args.dtype, attention=args.attention)
    except UsageError as e:
        parser.error(str(e))
    print(json.dumps(result) if args.json else report(result))


if __name__ == "__main__":
    main()
