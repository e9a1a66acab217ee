"""Baselines beside VSF (none, NAG, NASA, CFG): naive oracles, neutral settings, restore, and the CLI."""

import json

import pytest
import torch
from typer.testing import CliRunner

from oracles import ContrastOracle, generate, hooks_left, kernel_calls_per_step, naive_nag, run_with_oracle
from vsf_cli import guidance
from vsf_cli.cli import app
from vsf_cli.errors import UsageError
from vsf_cli.guidance.nag import nag_combine


def naive_nasa(s):
    return lambda z_pos, z_neg: z_pos - s * z_neg


def padded_negative(pipe, text):
    return pipe.encode_prompt(prompt=text, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False)[0]


@pytest.mark.parametrize("method, params, combine", [
    ("nag", {"nag_scale": 4.0, "nag_tau": 2.5, "nag_alpha": 0.125}, naive_nag(4.0, 2.5, 0.125)),
    ("nag", {"nag_scale": 10.0, "nag_tau": 1.2, "nag_alpha": 0.5}, naive_nag(10.0, 1.2, 0.5)),
    ("nasa", {"nasa_scale": 0.3}, naive_nasa(0.3)),
])
def test_methods_equal_their_naive_oracle(sd3, method, params, combine):
    with guidance.apply(sd3, method, negative="wheels", **params):
        fast = generate(sd3)
    slow = run_with_oracle(sd3, ContrastOracle(77 + 256, combine), [padded_negative(sd3, "wheels")])
    assert torch.allclose(fast, slow, atol=1e-4)
    assert not torch.allclose(fast, generate(sd3), atol=1e-3), "guidance had no effect"


def test_nag_combine_equals_naive_loop():
    g = torch.Generator().manual_seed(0)
    z_pos, z_neg = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 4, 6, 8, generator=g)
    fast = nag_combine(z_pos, z_neg, 5.0, 2.0, 0.3)
    rows = lambda x: x.transpose(1, 2).reshape(2, 6, 32)  # noqa: E731
    slow = torch.stack([naive_nag(5.0, 2.0, 0.3)(rows(z_pos)[i], rows(z_neg)[i]) for i in range(2)])
    assert torch.allclose(rows(fast), slow, atol=1e-5)


@pytest.mark.parametrize("method, params", [("nag", {"nag_scale": 1.0}), ("nasa", {"nasa_scale": 0.0}), ("none", {})])
def test_neutral_settings_equal_no_guidance(sd3, method, params):
    plain = generate(sd3)
    with guidance.apply(sd3, method, negative="wheels", **params):
        assert torch.allclose(generate(sd3), plain, atol=1e-5)


@pytest.mark.parametrize("method", ["nag", "nasa", "cfg", "none"])
def test_leaving_restores_bit_exactly(sd3, method):
    processors = dict(sd3.transformer.attn_processors)
    before = generate(sd3)
    with guidance.apply(sd3, method, negative="wheels") as extra:
        generate(sd3, **extra)
    assert torch.equal(generate(sd3), before)
    assert sd3.transformer.attn_processors == processors and not hooks_left(sd3.transformer)


# (nag_end, steps guided of 8): a fraction of the steps. By timestep (NAG's t >= (1 - nag_end) * 1000), SD3's
# shift-3 schedule would guide 7 of 8 at 0.5, and Flux, whose transformer gets t / 1000, none below 1.
WINDOWS = [(1.0, 8), (0.5, 4), (0.3, 3), (0.0, 0)]


@pytest.mark.parametrize("end, guided", WINDOWS)
def test_nag_end_guides_the_first_steps(sd3, monkeypatch, end, guided):
    images = {}

    def run(method, **params):
        with guidance.apply(sd3, method, negative="wheels", **params):
            images[method] = generate(sd3, steps=8)

    counts = kernel_calls_per_step(sd3, monkeypatch, lambda: run("nag", nag_scale=8.0, nag_end=end))
    assert counts == [3] * guided + [0] * (8 - guided)  # 3 joint blocks
    if end == 0:
        run("none")
        assert torch.equal(images["nag"], images["none"])


def test_nag_end_on_img2img_is_a_fraction_of_the_steps_run(sd3, monkeypatch):
    """strength 0.5 of 8 steps runs the last 4; nag_end 0.5 guides the first 2 of those."""
    from diffusers import StableDiffusion3Img2ImgPipeline
    from PIL import Image

    pipe = StableDiffusion3Img2ImgPipeline(**sd3.components)
    pipe.set_progress_bar_config(disable=True)

    def run():
        with guidance.apply(pipe, "nag", negative="wheels", nag_end=0.5):
            pipe(prompt="a red bike", image=Image.new("RGB", (32, 32), (200, 40, 30)), strength=0.5,
                 num_inference_steps=8, guidance_scale=0.0, generator=torch.Generator().manual_seed(0),
                 output_type="pt")

    assert kernel_calls_per_step(pipe, monkeypatch, run) == [3, 3, 0, 0]


@torch.no_grad()
def test_calls_outside_the_window_run_the_stock_processors(sd3):
    """nag_end 0.5 of 8 steps: each late call equals the stock transformer on its inputs bit for bit; early ones differ."""
    calls = []

    def record(module, args, kwargs, output):
        calls.append(({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}, output[0].clone()))

    handle = sd3.transformer.register_forward_hook(record, with_kwargs=True)
    try:
        with guidance.apply(sd3, "nag", negative="wheels", nag_scale=8.0, nag_end=0.5):
            generate(sd3, steps=8)
    finally:
        handle.remove()
    assert len(calls) == 8
    for step, (kwargs, output) in enumerate(calls):
        plain = sd3.transformer(**kwargs)[0]
        assert torch.equal(output, plain) if step >= 4 else not torch.allclose(output, plain, atol=1e-5), step


def test_cfg_is_the_pipelines_own_cfg(sd3):
    with guidance.apply(sd3, "cfg", negative="wheels", cfg_scale=5.0) as extra:
        assert extra == {"negative_prompt": "wheels", "guidance_scale": 5.0}
        ours = sd3(prompt="a red bike", num_inference_steps=2, height=32, width=32, output_type="pt",
                   generator=torch.Generator().manual_seed(0), **extra).images
    stock = sd3(prompt="a red bike", negative_prompt="wheels", guidance_scale=5.0, num_inference_steps=2,
                height=32, width=32, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(ours, stock)


@pytest.mark.parametrize("method, params", [
    ("nag", {"nag_scale": 0.5}), ("nag", {"nag_tau": 0.5}), ("nag", {"nag_alpha": 1.5}), ("nag", {"nag_end": 2}),
    ("nasa", {"nasa_scale": -1}), ("cfg", {"cfg_scale": 1.0}), ("cfg", {"scale": 3}),
])
def test_ranges_checked_on_construction(method, params):
    with pytest.raises(UsageError, match=method):
        guidance.create(method, **params)


def test_joint_methods_refuse_pipeline_cfg(sd3):
    with guidance.apply(sd3, "nag", negative="wheels"), pytest.raises(UsageError, match="guidance_scale"):
        generate(sd3, guidance_scale=3.0)


runner = CliRunner()


@pytest.mark.parametrize("method, flags, a1111", [
    ("nag", ["--nag-scale", "6", "--nag-alpha", "0.5"], "Guidance method: nag, NAG scale: 6.0, NAG tau: 2.5, NAG alpha: 0.5, NAG end: 1.0"),
    ("nasa", ["--nasa-scale", "0.3"], "Guidance method: nasa, NASA scale: 0.3"),
    ("cfg", ["--cfg-scale", "3"], "CFG scale: 3.0"),
])
def test_cli_methods_record_their_parameters(sd3_dir, tmp_path, monkeypatch, method, flags, a1111):
    from PIL import Image

    from vsf_cli.render.metadata import read_metadata

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["gen", "a red bike", "--neg", "wheels", "--model", str(sd3_dir), "--size", "32",
                                 "--steps", "2", "--seed", "1", "--method", method, *flags, "-o", "x.png"])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "x.png")
    assert meta["method"] == method and meta["scale"] is None and meta["offset"] is None
    assert a1111 in Image.open(tmp_path / "x.png").text["parameters"]


def test_cli_defaults_and_distilled_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["gen", "a bike", "--neg", "wheels", "--method", "cfg", "--dry-run", "--json"])
    assert result.exit_code == 0
    row = json.loads(result.stdout)
    assert (row["cfg_scale"], row["guidance_scale"]) == (4.5, 4.5)
    assert "distilled" in result.stderr
    row = json.loads(runner.invoke(app, ["gen", "a bike", "--neg", "wheels", "--method", "nag", "--dry-run",
                                         "--json"]).stdout)
    assert (row["nag_scale"], row["nag_tau"], row["nag_alpha"], row["nag_end"]) == (4.0, 2.5, 0.125, 1.0)
    bad = runner.invoke(app, ["gen", "a bike", "--neg", "wheels", "--method", "nag", "--nag-scale", "0", "--dry-run"])
    assert bad.exit_code == 2 and "nag_scale" in bad.stderr
