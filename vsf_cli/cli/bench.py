"""`vsf bench`: the per-step cost of each guidance method, measured side by side (over `vsf_cli.bench`)."""

import json

import typer

from vsf_cli.cli import app
from vsf_cli.cli.common import errors_to_exit_codes

# The help text names vsf_cli.bench's methods and shapes without importing it; tests/test_bench.py checks they agree.
_METHODS = "none,vsf,vsf-dense,vsf-compat,nag,nasa,cfg"


@app.command("bench")
def bench_command(
    model: str = typer.Option("sd35-large", "--model", show_default=False, help="Transformer shape: sd35-large, sd35-medium, zimage-turbo, flux2-klein-4b, qwen-image, wan22-a14b (one expert of two) or wan22-ti2v-5b; random weights. (default: sd35-large)"),
    blocks: int = typer.Option(None, "--blocks", show_default=False, help="Keep the first N blocks, 1 to 38 (sd35-medium: 24, zimage-turbo: 30, flux2-klein-4b: 25, split 1 double to 4 single, qwen-image: 60, wan22-a14b: 40, wan22-ti2v-5b: 30); 1-5 on a CPU. (default: all)"),
    size: str = typer.Option(None, "--size", show_default=False, help="N or WxH in pixels, a multiple of 16 up to 3072 (sd35-medium: 6144, zimage-turbo: 8192, flux2-klein-4b and Wan: 4096, qwen-image: 98304; wan22-ti2v-5b in multiples of 32); 512 on a CPU. (default: 1024, for Wan 832x480)"),
    frames: int = typer.Option(None, "--frames", show_default=False, help="Video shapes only: frames, 4k+1 from 1 to 201; 1-9 on a CPU. (default: 81)"),
    neg_tokens: int = typer.Option(8, "--neg-tokens", show_default=False, help="Length of the unpadded negative (VSF), 1 to 512 tokens. (default: 8)"),
    repeats: int = typer.Option(5, "--repeats", show_default=False, help="Timed rounds per method, 1 to 1000; the median is reported. (default: 5)"),
    warmup: int = typer.Option(1, "--warmup", show_default=False, help="Untimed rounds before them, 0 to 100. (default: 1)"),
    methods: str = typer.Option(None, "--methods", show_default=False, help=f"Comma-separated subset of {_METHODS}; vsf-dense and vsf-compat are for sd35-*, flux2-klein-4b only. (default: all the model takes)"),
    quantize: str = typer.Option("none", "--quantize", show_default=False, help="Weights: none (as built), int8 (torchao), int8-quanto, or gguf (a Q8_0 GGUF file written from them), each loaded as --quantize loads a model. (default: none)"),
    device: str = typer.Option("auto", "--device", show_default=False, help="auto, cpu, cuda, cuda:N or mps; auto picks cuda > mps > cpu. (default: auto)"),
    dtype: str = typer.Option("auto", "--dtype", show_default=False, help="auto, float32, bfloat16 or float16; auto is bfloat16 on CUDA, else float32. (default: auto)"),
    attention: bool = typer.Option(False, "--attention", show_default=False, help="Also time one attention call at full SD3.5 Large (joint) and Wan 1.3B (cross) shapes. (default: off)"),
    as_json: bool = typer.Option(False, "--json", show_default=False, help="Print one JSON object instead of the table. (default: off)"),
) -> None:
    """Time one transformer step per guidance method on random weights (no download) and print the ratios to none."""
    with errors_to_exit_codes():
        from vsf_cli import bench

        result = bench.benchmark(model, blocks=blocks, size=size, frames=frames, neg_tokens=neg_tokens, repeats=repeats,
                                 warmup=warmup, methods=methods, device=device, dtype=dtype, attention=attention,
                                 quantize=quantize)
        typer.echo(json.dumps(result) if as_json else bench.report(result))
