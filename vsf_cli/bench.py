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
}
METHODS = ("none", "vsf", "vsf-dense", "vsf-compat", "nag", "nasa", "cfg")
POSITIVE_TOKENS = 77 + 256


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
    from diffusers import SD3Transformer2DModel

    from vsf_cli.guidance.joint import install_joint
    from vsf_cli.models.families import sd3
    from vsf_cli.models.loading import quiet_libraries, resolve_device, resolve_dtype

    device = resolve_device(device)
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    config = {**CONFIGS[model], **({"num_layers": blocks} if blocks else {})}
    if "dual_attention_layers" in config:
        config["dual_attention_layers"] = tuple(i for i in config["dual_attention_layers"] if i < config["num_layers"])
    torch.manual_seed(0)
    # `.to(dtype)` on a model diffusers built would log "modules that should be kept in float32: []": there are none.
    with quiet_libraries():
        transformer = SD3Transformer2DModel(**config).to(device, torch_dtype).eval()
    latent = size // 8
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device, torch_dtype)

    inputs = dict(hidden_states=randn(1, 16, latent, latent), encoder_hidden_states=randn(1, POSITIVE_TOKENS, 4096),
                  pooled_projections=randn(1, 2048), timestep=torch.tensor([500.0], device=device))
    cfg_inputs = {k: torch.cat([v, v]) for k, v in inputs.items()}
    pipe = SimpleNamespace(transformer=transformer)

    def family(padded):
        n = POSITIVE_TOKENS if padded else neg_tokens
        # The SD3 adapter with random negative tokens: nothing here loads text encoders.
        return dataclasses.replace(sd3.FAMILY, encode_negative=lambda pipe, text, padded: randn(1, n, 4096))

    def step(method):
        kwargs = cfg_inputs if method == "cfg" else inputs
        if method in ("none", "cfg"):
            return lambda: transformer(**kwargs)
        kernel, options = _kernels(method)
        installed = install_joint(pipe, family(options.get("padded", False)), ["negative"], kernel, **options)

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

    return {
        "model": model, "blocks": config["num_layers"], "size": size, "image_tokens": (latent // 2) ** 2,
        "text_tokens": POSITIVE_TOKENS, "negative_tokens": neg_tokens, "steps": steps, "repeats": repeats,
        "device": _device_name(device), "dtype": str(torch_dtype).removeprefix("torch."),
        "attention_backend": getattr(attention_lse, "backend", None), "versions": _versions(), "rows": rows,
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

    image, positive, negative = group(image_tokens), group(POSITIVE_TOKENS), group(neg_tokens)
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
    lines = [f"{result['model']}, {result['blocks']} blocks, {result['size']}² ({result['image_tokens']} image + "
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
                  methods: str) -> tuple[str, ...]:
    """Refuse out-of-range options with one line before anything heavy is imported; returns the method tuple."""
    from vsf_cli.errors import UsageError

    if model not in CONFIGS:
        raise UsageError(f"--model {model!r}: choose from {', '.join(CONFIGS)}")
    layers, positions = CONFIGS[model]["num_layers"], CONFIGS[model]["pos_embed_max_size"]
    if blocks is not None and not 1 <= blocks <= layers:
        raise UsageError(f"--blocks {blocks}: {model} has 1 to {layers} blocks")
    largest = positions * 16  # 8x VAE downsampling, 2x2 patches, at most pos_embed_max_size patches a side
    if not 16 <= size <= largest or size % 16:
        raise UsageError(f"--size {size}: a multiple of 16 from 16 to {largest} for {model}")
    if not 1 <= neg_tokens <= MAX_NEG_TOKENS:
        raise UsageError(f"--neg-tokens {neg_tokens}: 1 to {MAX_NEG_TOKENS}")
    if not 1 <= repeats <= MAX_REPEATS:
        raise UsageError(f"--repeats {repeats}: 1 to {MAX_REPEATS}")
    if not 0 <= warmup <= MAX_WARMUP:
        raise UsageError(f"--warmup {warmup}: 0 to {MAX_WARMUP}")
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise UsageError(f"--methods {methods!r}: a comma-separated subset of {','.join(METHODS)}")
    return chosen


def benchmark(model: str = "sd35-large", *, blocks: int | None = None, size: int = 1024, neg_tokens: int = 8,
              repeats: int = 5, warmup: int = 1, methods: str = ",".join(METHODS), device: str = "auto",
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
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
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
