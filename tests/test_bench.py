"""The benchmark runs on CPU at tiny shapes and reports every field; timings are never asserted here."""

import dataclasses
import json

import pytest

from vsf_cli import bench


def test_bench_reports_every_method_and_field(capsys, monkeypatch):
    monkeypatch.setattr(bench, "cold_start", lambda repeats=5: 0.123)
    bench.main(["--blocks", "1", "--size", "64", "--repeats", "1", "--warmup", "0", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert {"model", "blocks", "size", "image_tokens", "text_tokens", "negative_tokens", "device", "dtype",
            "attention_backend", "versions", "rows", "cold_start_help_s"} <= set(result)
    assert (result["blocks"], result["image_tokens"], result["attention_backend"]) == (1, 16, "cpu flash")
    assert [r["method"] for r in result["rows"]] == list(bench.METHODS)
    base = result["rows"][0]["step_ms"]
    for row in result["rows"]:  # each ratio is its own step over `none`'s, and the spread brackets the median
        assert _is_ratio(row["ratio"], row["step_ms"], base) and row["spread_ms"][0] <= row["step_ms"] <= row["spread_ms"][1]
        assert row["paired_ratio"] == row["ratio"]  # one round: the paired ratio is that round's ratio
    assert result["rows"][0]["paired_ratio"] == 1.0
    assert "| vsf |" in bench.table(result)


def _shrunk(monkeypatch, model, **config):
    """Swap `model`'s shape for one with a tiny config (the real ones are billions of weights)."""
    shape = bench.SHAPES[model]
    monkeypatch.setitem(bench.SHAPES, model, dataclasses.replace(shape, config={**shape.config, **config}))


def test_bench_runs_the_zimage_shape(capsys, monkeypatch):
    monkeypatch.setattr(bench, "cold_start", lambda repeats=5: 0.123)
    _shrunk(monkeypatch, "zimage-turbo", dim=64, n_heads=4, axes_dims=[4, 6, 6], n_kv_heads=4, cap_feat_dim=32)
    bench.main(["--model", "zimage-turbo", "--blocks", "1", "--size", "64", "--repeats", "1", "--warmup", "0", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert (result["blocks"], result["image_tokens"], result["text_tokens"]) == (1, 16, 64)
    assert [r["method"] for r in result["rows"]] == ["none", "vsf", "nag", "nasa", "cfg"]


@pytest.mark.parametrize("blocks, split", [(2, "1 double + 1 single"), (5, "1 double + 4 single")])
def test_bench_runs_the_flux2_klein_shape(capsys, monkeypatch, blocks, split):
    """--blocks splits as the model's 5 double to 20 single; CFG runs klein's two passes one after the other."""
    import diffusers

    calls = []
    monkeypatch.setattr(bench, "cold_start", lambda repeats=5: 0.123)
    _shrunk(monkeypatch, "flux2-klein-4b", num_attention_heads=2, attention_head_dim=16, axes_dims_rope=(4, 4, 4, 4),
            joint_attention_dim=32, timestep_guidance_channels=32)

    class Counted(diffusers.Flux2Transformer2DModel):
        def forward(self, *args, **kwargs):
            calls.append(kwargs["encoder_hidden_states"].shape[:2])
            return super().forward(*args, **kwargs)

    monkeypatch.setattr(diffusers, "Flux2Transformer2DModel", Counted)
    bench.main(["--model", "flux2-klein-4b", "--blocks", str(blocks), "--size", "64", "--repeats", "1", "--warmup",
                "0", "--methods", "none,vsf,nag,cfg", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert (result["blocks"], result["blocks_split"], result["image_tokens"], result["text_tokens"]) == (blocks, split, 16, 512)
    assert [r["method"] for r in result["rows"]] == ["none", "vsf", "nag", "cfg"]
    # batch and text tokens per call: none, vsf (+ 8 negative), nag (+ 512 padded), cfg (two calls of one); in the
    # timed round, then in the memory pass
    assert calls == [(1, 512), (1, 512 + 8), (1, 512 + 512), (1, 512), (1, 512)] * 2
    assert f"{blocks} blocks ({split})" in bench.table(result)


def test_bench_runs_the_qwen_image_shape(capsys, monkeypatch):
    monkeypatch.setattr(bench, "cold_start", lambda repeats=5: 0.123)
    _shrunk(monkeypatch, "qwen-image", num_attention_heads=2, attention_head_dim=16, axes_dims_rope=(4, 6, 6),
            joint_attention_dim=32)
    bench.main(["--model", "qwen-image", "--blocks", "1", "--size", "64", "--repeats", "1", "--warmup", "0", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert (result["blocks"], result["image_tokens"], result["text_tokens"]) == (1, 16, 64)
    assert [r["method"] for r in result["rows"]] == ["none", "vsf", "nag", "nasa", "cfg"]


TINY_WAN = dict(num_attention_heads=2, attention_head_dim=8, ffn_dim=32, text_dim=32, freq_dim=16, rope_max_seq_len=32)


def test_bench_wan22_rows_side_by_side(capsys, monkeypatch):
    """The Wan shapes measure none, vsf, nag, nasa and cfg in one run (a shrunken config: the real one is 14B)."""
    monkeypatch.setattr(bench, "cold_start", lambda repeats=5: 0.123)
    _shrunk(monkeypatch, "wan22-a14b", **TINY_WAN)
    bench.main(["--model", "wan22-a14b", "--blocks", "1", "--size", "64x32", "--frames", "5", "--repeats", "2",
                "--warmup", "0", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in result["rows"]] == ["none", "vsf", "nag", "nasa", "cfg"]
    assert (result["blocks"], result["size"], result["frames"], result["text_tokens"]) == (1, "64x32", 5, 512)
    assert result["image_tokens"] == 2 * (32 // 16) * (64 // 16)  # 2 latent frames of 2x2-patched 8x latents
    base = result["rows"][0]["step_ms"]
    for row in result["rows"]:
        assert _is_ratio(row["ratio"], row["step_ms"], base)
    assert bench.table(result).splitlines()[0].startswith("wan22-a14b, 1 blocks, 64x32, 5 frames (16 video tokens, "
                                                          "a 512-token text context, 8 negative tokens), float32 weights (")
    assert result["attention_backend"] is None  # Wan's kernels are plain SDPA: no log-sum-exp backend to name


def test_bench_wan22_installs_and_removes_each_method(monkeypatch):
    """Every timed guided call really ran the method's cross kernel, and the transformer is stock afterwards."""
    from vsf_cli.guidance import nag, vsf

    calls = []
    for cls in (vsf.VSF, nag.NAG):
        make = cls.cross_kernel

        def counting(self, make=make, name=cls.__name__):
            inner = make(self)
            return lambda *a, **k: calls.append(name) or inner(*a, **k)
        monkeypatch.setattr(cls, "cross_kernel", counting)
    _shrunk(monkeypatch, "wan22-ti2v-5b", **TINY_WAN)
    result = bench.run("wan22-ti2v-5b", blocks=2, size=(64, 64), frames=1, repeats=1, warmup=0,
                       methods=("none", "vsf", "nag", "cfg"))
    # 2 blocks each, in the timed round and again in the memory pass; none and cfg run stock
    assert calls == ["VSF", "VSF", "NAG", "NAG"] * 2
    assert result["image_tokens"] == 1 * 2 * 2  # a 16x VAE: one latent frame of 4x4, in 2x2 patches


@pytest.mark.parametrize("args, message", [
    (["--model", "wan22-a14b", "--size", "840x480"], "--size 840x480: a multiple of 16 from 16 to 4096 for wan22-a14b"),
    (["--model", "wan22-ti2v-5b", "--size", "848x480"], "a multiple of 32 from 32"),
    (["--model", "wan22-a14b", "--frames", "80"], "--frames 80: 4k+1 from 1 to 201"),
    (["--frames", "5"], "--frames is for the video shapes (wan22-a14b, wan22-ti2v-5b); sd35-large makes images"),
    (["--model", "wan22-a14b", "--methods", "vsf,vsf-dense"], "wan22-a14b takes none,vsf,nag,nasa,cfg"),
    (["--model", "wan22-a14b", "--blocks", "41"], "--blocks 41: wan22-a14b has 1 to 40 blocks"),
    (["--size", "1024x"], "--size 1024x: a multiple of 16"),
])
def test_bench_wan22_bad_options(args, message, monkeypatch, capsys):
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("the benchmark ran"))
    with pytest.raises(SystemExit) as exit_:
        bench.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_cold_start_fails_when_the_cli_fails(monkeypatch):
    import subprocess

    bench.cold_start(repeats=1)  # check=True: raises if `vsf --help` fails
    monkeypatch.setattr(bench.sys, "executable", "false")
    with pytest.raises(subprocess.CalledProcessError):
        bench.cold_start(repeats=1)


def test_attention_only_rows():
    rows = bench.attention_only(image_tokens=32, heads=2, repeats=1)
    assert [r["method"] for r in rows] == ["none", "vsf", "vsf-dense"]
    assert all(_is_ratio(r["ratio"], r["ms"], rows[0]["ms"]) for r in rows)


def test_cross_attention_only_rows():
    rows = bench.cross_attention_only(image_tokens=32, heads=2, head_dim=8, context=24, repeats=1)
    assert [r["method"] for r in rows] == ["none", "vsf", "vsf-dense"]
    assert all(_is_ratio(r["ratio"], r["ms"], rows[0]["ms"]) for r in rows)


# --- `vsf bench`: the same benchmark as a subcommand ----------------------------------------------------------------

QUICK = ["--model", "sd35-medium", "--blocks", "1", "--size", "64", "--repeats", "1", "--warmup", "0",
         "--methods", "none,vsf"]


def test_vsf_bench_json_has_the_module_fields_and_no_library_chatter(monkeypatch, capfd):
    import diffusers.utils.logging as diffusers_logging
    from typer.testing import CliRunner

    from vsf_cli.cli import app

    monkeypatch.setattr(bench, "cold_start", lambda repeats=5: 0.123)
    diffusers_logging.set_verbosity_warning()  # the library default, whatever earlier tests left
    result = CliRunner().invoke(app, ["bench", *QUICK, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["model"], out["blocks"], out["image_tokens"], out["negative_tokens"]) == ("sd35-medium", 1, 16, 8)
    assert [r["method"] for r in out["rows"]] == ["none", "vsf"]
    assert all({"step_ms", "spread_ms", "image_s", "ratio", "paired_ratio", "peak_mib"} <= set(r) for r in out["rows"])
    assert out["cold_start_help_s"] == 0.123 and "attention_only" not in out
    # diffusers logs through its own handler on the real stderr, so look there as well as at the runner's.
    assert "float32" not in result.stderr + capfd.readouterr().err


def test_vsf_bench_table(monkeypatch):
    from typer.testing import CliRunner

    from vsf_cli.cli import app

    monkeypatch.setattr(bench, "cold_start", lambda repeats=5: 0.5)
    result = CliRunner().invoke(app, ["bench", *QUICK])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("sd35-medium, 1 blocks, 64²")
    assert lines[2] == ("| method | ms / step (median) | min–max | × none | × none, paired by round | step MiB | "
                        "step MiB over none, % of weights | CUDA peak MiB |")
    assert [line.split(" | ")[0] for line in lines[4:6]] == ["| none", "| vsf"]
    assert lines[-1] == "`vsf --help` cold start: 0.5 s"


@pytest.mark.parametrize("args, message", [
    (["--size", "1000"], "--size 1000: a multiple of 16"),
    (["--blocks", "39"], "--blocks 39: sd35-large has 1 to 38 blocks"),
    (["--model", "sd35-medium", "--blocks", "25"], "1 to 24 blocks"),
    (["--methods", "vsf,cgf"], "--methods 'vsf,cgf': a comma-separated subset of"),
    (["--repeats", "0"], "--repeats 0: 1 to 1000"),
    (["--warmup", "-1"], "--warmup -1: 0 to 100"),
    (["--neg-tokens", "0"], "--neg-tokens 0: 1 to 512"),
    (["--model", "flux"], "--model 'flux': choose from sd35-large, sd35-medium, zimage-turbo, flux2-klein-4b, qwen-image"),
    (["--model", "qwen-image", "--blocks", "61"], "1 to 60 blocks"),
    (["--model", "zimage-turbo", "--methods", "none,vsf-compat"], "zimage-turbo takes none,vsf,nag,nasa,cfg"),
    (["--model", "zimage-turbo", "--blocks", "31"], "1 to 30 blocks"),
])
def test_vsf_bench_bad_options_are_one_line_before_any_work(args, message, monkeypatch):
    from typer.testing import CliRunner

    from vsf_cli.cli import app

    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("the benchmark ran"))
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_vsf_bench_help_names_what_the_module_offers():
    from typer.testing import CliRunner

    from vsf_cli.cli import app
    from vsf_cli.cli import bench as bench_cli

    assert bench_cli._METHODS == ",".join(bench.METHODS)
    result = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--model", "--blocks", "--size", "--frames", "--neg-tokens", "--repeats", "--warmup", "--methods",
                   "--quantize", "--device", "--dtype", "--attention", "--json"):
        assert option in result.stdout
    assert result.stdout.count("(default: ") == 13
    shapes = bench.SHAPES
    layers = {m: bench.blocks_in(s.config, s) for m, s in shapes.items()}
    text = " ".join(result.stdout.replace("│", " ").split())
    assert (f"1 to {layers['sd35-large']} (sd35-medium: {layers['sd35-medium']}, zimage-turbo: "
            f"{layers['zimage-turbo']}, flux2-klein-4b: {layers['flux2-klein-4b']}, split 1 double to 4 single, "
            f"qwen-image: {layers['qwen-image']}, wan22-a14b: {layers['wan22-a14b']}, wan22-ti2v-5b: "
            f"{layers['wan22-ti2v-5b']})") in text
    assert (f"up to {shapes['sd35-large'].max_side} (sd35-medium: {shapes['sd35-medium'].max_side}, zimage-turbo: "
            f"{shapes['zimage-turbo'].max_side}, flux2-klein-4b and Wan: {shapes['flux2-klein-4b'].max_side}, "
            f"qwen-image: {shapes['qwen-image'].max_side}; wan22-ti2v-5b in multiples of "
            f"{shapes['wan22-ti2v-5b'].multiple})") in text
    assert shapes["wan22-a14b"].max_side == shapes["flux2-klein-4b"].max_side
    assert f"from 1 to {bench.MAX_FRAMES}" in text and "(default: 1024, for Wan 832x480)" in text
    assert ", ".join(shapes) in text.replace(" (one expert of two)", "").replace(" or ", ", ")
    dense = [m for m, s in shapes.items() if "vsf-dense" in s.methods]
    assert dense == ["sd35-large", "sd35-medium", "flux2-klein-4b"] and "are for sd35-*, flux2-klein-4b only" in text


def _is_ratio(ratio: float, ms: float, base_ms: float) -> bool:
    """`ratio` is ms / base_ms, up to the rounding of the printed milliseconds (2 decimals) and of the ratio (3)."""
    slack = (ms / base_ms) * (0.005 / ms + 0.005 / base_ms) + 0.0005
    return abs(ratio - ms / base_ms) <= slack


def test_step_memory_counts_what_a_call_makes_and_holds_not_its_inputs():
    import torch

    weight = torch.zeros(256, 1024)  # 1 MiB of float32, made before the call

    def call():
        view = weight.t()  # shares the weight's memory: nothing new
        held = torch.ones(512, 1024)  # 2 MiB, held
        brief = held * 2  # 2 MiB more, at once: the peak is 4 MiB
        del brief
        return (held + view.sum()).sum()  # 2 MiB while the sum is taken

    assert bench.step_mib(call) == pytest.approx(4.0, abs=0.01)


@pytest.mark.parametrize("quantize", ["int8", "int8-quanto", "gguf"])
def test_quantized_weights_are_smaller_and_guidance_adds_little_memory(monkeypatch, quantize):
    _shrunk(monkeypatch, "sd35-medium", num_attention_heads=2, attention_head_dim=64, joint_attention_dim=64,
            caption_projection_dim=128, pooled_projection_dim=32, pos_embed_max_size=16)
    common = dict(blocks=2, size=(64, 64), repeats=1, warmup=0, methods=("none", "vsf", "nag", "cfg"))
    plain, quantized = bench.run("sd35-medium", **common), bench.run("sd35-medium", quantize=quantize, **common)
    assert quantized["quantize"] == quantize and quantized["weights_mib"] < 0.6 * plain["weights_mib"]
    rows = {row["method"]: row for row in quantized["rows"]}
    assert rows["none"]["over_none_pct"] == 0 and all(row["step_mib"] > 0 for row in rows.values())
    assert rows["cfg"]["step_mib"] > rows["vsf"]["step_mib"] >= rows["none"]["step_mib"]  # CFG doubles the batch
    assert f"{quantize} weights computing in float32" in bench.table(quantized)
