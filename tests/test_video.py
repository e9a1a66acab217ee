"""Wan video: cross-attention guidance against dense oracles, its invariants, and `vsf video` end to end."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from oracles import DenseCross, check_uncond_passes_run_plain, hooks_left, kernel_calls_per_step, negative_states
from tiny import build_wan
from vsf_cli import guidance
from vsf_cli.cli import app

L = 24  # text context length (max_sequence_length); real Wan uses 512
PROMPT, NEG = "a red car", "wheels"
CALL = {"num_frames": 5, "height": 32, "width": 32, "num_inference_steps": 2, "max_sequence_length": L,
        "output_type": "latent"}


@pytest.fixture(scope="session")
def wan_dir(tmp_path_factory):
    return build_wan(tmp_path_factory.mktemp("models") / "tiny-wan")


@pytest.fixture
def wan(wan_dir):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(wan_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe, guidance_scale=1.0, **kw):
    return pipe(prompt=kw.pop("prompt", PROMPT), guidance_scale=guidance_scale,
                generator=torch.Generator().manual_seed(0), **{**CALL, **kw}).frames


def oracle_render(pipe, context, processor, **kw):
    """The stock pipeline given the guided context directly, every attn2 replaced by a dense processor."""
    for block in pipe.transformer.blocks:
        block.attn2.set_processor(processor)
    return render(pipe, prompt=None, prompt_embeds=context, **kw)


def render_plain(pipe, **kw):
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    for block in pipe.transformer.blocks:
        block.attn2.set_processor(WanAttnProcessor())
    return render(pipe, **kw)


@torch.no_grad()
@pytest.mark.parametrize("scale, offset", [(1.5, 0.2), (3.0, -0.5)])
def test_vsf_equals_dense_oracle(wan, scale, offset):
    with guidance.apply(wan, "vsf", negative=NEG, scale=scale, offset=offset):
        fast = render(wan)
    negative = negative_states(wan, NEG)
    n = negative.shape[1]
    positive = wan.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=L - n)[0]
    dense = oracle_render(wan, torch.cat([positive, negative], 1), DenseCross(n, scale=scale, offset=offset))
    assert n < 10  # unpadded: the negative's own few tokens, not L
    assert torch.allclose(fast, dense, atol=2e-5, rtol=1e-4), (fast - dense).abs().max()
    assert not torch.allclose(fast, render_plain(wan), atol=1e-3)  # the negative did something


@torch.no_grad()
@pytest.mark.parametrize("method, params", [
    ("nag", {"nag_scale": 4.0, "nag_tau": 2.5, "nag_alpha": 0.5}),
    ("nag", {"nag_scale": 4.0, "nag_tau": 1.05, "nag_alpha": 0.5}),  # the tiny model's ratios are 1.01-1.13: some capped
    ("nasa", {"nasa_scale": 0.3}),
])
def test_baselines_equal_dense_oracle(wan, method, params):
    with guidance.apply(wan, method, negative=NEG, **params):
        fast = render(wan)
    positive = wan.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=L)[0]
    context = torch.cat([positive, negative_states(wan, NEG, L)], 1)
    dense = oracle_render(wan, context, DenseCross(L, method, **params))
    assert torch.allclose(fast, dense, atol=2e-5, rtol=1e-4), (fast - dense).abs().max()


@torch.no_grad()
@pytest.mark.parametrize("method, params", [("nag", {"nag_scale": 1.0}), ("nasa", {"nasa_scale": 0.0})])
def test_neutral_baselines_equal_no_guidance(wan, method, params):
    plain = render(wan)
    with guidance.apply(wan, method, negative=NEG, **params):
        neutral = render(wan)
    assert torch.allclose(neutral, plain, atol=1e-6), (neutral - plain).abs().max()


@torch.no_grad()
def test_leaving_restores_bit_exactly(wan):
    before = render(wan)
    processors = dict(wan.transformer.attn_processors)
    with guidance.apply(wan, "vsf", negative=NEG):
        guided = render(wan)
    assert not torch.equal(guided, before)
    assert torch.equal(render(wan), before)
    assert wan.transformer.attn_processors == processors and not hooks_left(wan.transformer)


@torch.no_grad()
@pytest.mark.parametrize("offset", [1e9, float("inf")])
def test_infinite_offset_equals_positive_alone(wan, offset):
    """With the negative's logits at -1e9 (or -inf) the image reads only [positive + padding], L - n_N tokens."""
    n = negative_states(wan, NEG).shape[1]
    with guidance.apply(wan, "vsf", negative=NEG, offset=offset):
        off = render(wan)
    assert torch.allclose(off, render(wan, max_sequence_length=L - n), atol=1e-6)


@torch.no_grad()
def test_cfg_unconditional_pass_runs_plain_attention(wan):
    """guidance_scale > 1: the pipeline's "uncond" forward must see the stock model, the "cond" one VSF."""
    def run():
        with guidance.apply(wan, "vsf", negative=NEG):
            render(wan, guidance_scale=3.0, negative_prompt="blurry")

    check_uncond_passes_run_plain(wan, run)


@torch.no_grad()
@pytest.mark.parametrize("end, guided, guidance_scale", [(1.0, 8, 1.0), (0.5, 4, 1.0), (0.5, 4, 3.0), (0.0, 0, 3.0)])
def test_nag_end_guides_the_first_steps(wan, monkeypatch, end, guided, guidance_scale):
    """A fraction of the steps, also with CFG's second forward per step (never guided itself)."""
    cfg = {"guidance_scale": guidance_scale, "num_inference_steps": 8}
    if guidance_scale > 1:
        cfg["negative_prompt"] = "blurry"
    frames = {}

    def run(method, **params):
        with guidance.apply(wan, method, negative=NEG, **params):
            frames[method] = render(wan, **cfg)

    counts = kernel_calls_per_step(wan, monkeypatch, lambda: run("nag", nag_end=end))
    assert counts == [2] * guided + [0] * (8 - guided)  # 2 blocks' cross-attention, conditional pass only
    if end == 0:
        run("none")
        assert torch.equal(frames["nag"], frames["none"])


@pytest.fixture(scope="session")
def i2v_dir(tmp_path_factory):
    return build_wan(tmp_path_factory.mktemp("models") / "tiny-wan-i2v", image_to_video=True)


@torch.no_grad()
def test_image_context_tokens_are_not_flipped(i2v_dir):
    """Image-to-video: image-context tokens precede the text; only the text part may get the flip."""
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    pipe = WanImageToVideoPipeline.from_pretrained(i2v_dir)
    pipe.set_progress_bar_config(disable=True)
    first = Image.new("RGB", (32, 32), (200, 40, 30))
    # diffusers' Wan attention splits the image tokens off at exactly 512 text tokens, as real Wan I2V uses
    with guidance.apply(pipe, "vsf", negative=NEG, scale=2.0, offset=0.1):
        fast = render(pipe, image=first, max_sequence_length=512)
    negative = negative_states(pipe, NEG)
    n = negative.shape[1]
    positive = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512 - n)[0]
    image_tokens = pipe.encode_image(first).shape[1]
    dense = oracle_render(pipe, torch.cat([positive, negative], 1),
                          DenseCross(n, image_tokens=image_tokens, scale=2.0, offset=0.1), image=first,
                          max_sequence_length=512)
    assert torch.allclose(fast, dense, atol=2e-5, rtol=1e-4), (fast - dense).abs().max()


@torch.no_grad()
def test_prompt_and_negative_longer_than_the_context_is_refused(wan):
    from vsf_cli.errors import UsageError

    with guidance.apply(wan, "vsf", negative="red car " * 4), pytest.raises(UsageError, match="text context"):
        render(wan, max_sequence_length=12)


# --- the command -------------------------------------------------------------------------------------------------

runner = CliRunner()


def video(wan_dir, out, *args):
    """`vsf video` on the tiny model, seed 3, into `out` (a folder: {seed}.mp4 in it; else the file itself)."""
    target = out / "{seed}.mp4" if out.is_dir() else out
    base = ["video", PROMPT, "--neg", NEG, "--model", str(wan_dir), "--size", "32", "--steps", "2", "--seed", "3"]
    return runner.invoke(app, [*base, "-o", str(target), *args])


def test_mp4_has_the_frames_size_and_settings(wan_dir, tmp_path):
    from vsf_cli.render.video import read_frames

    result = video(wan_dir, tmp_path, "--frames", "9", "--trim-start", "2", "--fps", "8", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    path = tmp_path / "3.mp4"
    assert record["path"] == str(path) and record["frames"] == 9 and record["trim_start"] == 2
    assert read_frames(path).shape == (7, 32, 32, 3)
    info = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    assert info["negative"] == NEG and info["frames"] == 9 and info["fps"] == 8
    (tmp_path / "3.json").unlink()  # without its sidecar the mp4's own comment tag still has the settings
    assert json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout) == info


def test_replaying_a_video_gives_the_same_frames(wan_dir, tmp_path):
    from vsf_cli.render.video import read_frames

    assert video(wan_dir, tmp_path, "--frames", "5").exit_code == 0
    again = runner.invoke(app, ["video", "--from", str(tmp_path / "3.json"), "-o", str(tmp_path / "again.mp4")])
    assert again.exit_code == 0, again.output
    assert np.array_equal(read_frames(tmp_path / "3.mp4"), read_frames(tmp_path / "again.mp4"))


@pytest.mark.parametrize("fmt, name", [("gif", "3.gif"), ("webp", "3.webp"), ("frames", "3")])
def test_other_formats(wan_dir, tmp_path, fmt, name):
    from vsf_cli.render.video import read_frames

    args = ["video", PROMPT, "--neg", NEG, "--model", str(wan_dir), "--size", "32", "--steps", "1", "--seed", "3",
            "--frames", "5", "--format", fmt]
    if fmt != "frames":  # a file's extension must match --format; a frames folder takes the name without it
        result = runner.invoke(app, [*args, "-o", str(tmp_path / "{seed}.mp4")])
        assert result.exit_code == 2 and "must end in" in result.output
    result = runner.invoke(app, [*args, "-o", str(tmp_path / (name if fmt != "frames" else "3.mp4"))])
    assert result.exit_code == 0, result.output
    assert read_frames(tmp_path / name).shape == (5, 32, 32, 3)
    assert json.loads(runner.invoke(app, ["info", str(tmp_path / name), "--json"]).stdout)["negative"] == NEG


def test_frame_count_must_be_4k_plus_1(wan_dir, tmp_path):
    result = video(wan_dir, tmp_path, "--frames", "80")
    assert result.exit_code == 2 and "77 or 81" in result.output and "Traceback" not in result.output
    result = video(wan_dir, tmp_path, "--frames", "85", "--dry-run")
    assert result.exit_code == 0 and "more than the 81" in result.output


def test_existing_output_is_kept(wan_dir, tmp_path):
    (tmp_path / "3.json").write_text("{}")
    result = video(wan_dir, tmp_path, "--frames", "5")
    assert result.exit_code == 1 and "already exists" in result.output
    assert (tmp_path / "3.json").read_text() == "{}" and not (tmp_path / "3.mp4").exists()


def test_models_of_the_wrong_kind_are_refused(wan_dir, sd3_dir, tmp_path):
    result = runner.invoke(app, ["gen", PROMPT, "--model", str(wan_dir), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "vsf video" in result.output
    result = runner.invoke(app, ["video", PROMPT, "--model", str(sd3_dir), "-o", str(tmp_path / "x.mp4")])
    assert result.exit_code == 2 and "vsf gen" in result.output
    result = runner.invoke(app, ["gen", PROMPT, "--model", str(sd3_dir), "--frames", "5"])
    assert result.exit_code == 2  # no such option on gen


def test_registry_defaults_and_distill_lora(tmp_path):
    result = runner.invoke(app, ["video", PROMPT, "--neg", NEG, "--model", "wan", "--seed", "1", "--dry-run", "--json",
                                 "-o", str(tmp_path / "v.mp4")])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert (s["model"], s["frames"], s["fps"], s["width"], s["height"], s["scale"], s["offset"]) == \
        ("wan", 81, 16, 832, 480, 1.5, 0.2)
    assert s["lora"] == ["Kijai/WanVideo_comfy/Wan21_CausVid_bidirect2_T2V_1_3B_lora_rank32.safetensors:0.5"]
    lora = tmp_path / "x.safetensors"  # a local LoRA must exist, even for a dry run
    lora.write_bytes(b"")
    no_lora = runner.invoke(app, ["video", PROMPT, "--model", "wan-14b", "--no-default-lora", "--lora", str(lora),
                                  "--seed", "1", "--dry-run", "--json", "-o", str(tmp_path / "v.mp4")])
    s = json.loads(no_lora.stdout)
    assert s["lora"] == [str(lora)] and s["default_lora"] is False and s["steps"] == 6


def build_wan_lora(model, folder):
    from diffusers import WanPipeline, WanTransformer3DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = WanTransformer3DModel.from_pretrained(model / "transformer")
    torch.manual_seed(0)
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return folder / "pytorch_lora_weights.safetensors"


def test_lora_from_a_local_file_changes_the_video(wan_dir, tmp_path):
    from vsf_cli.render.video import read_frames

    lora = build_wan_lora(wan_dir, tmp_path / "lora")
    assert video(wan_dir, tmp_path / "plain.mp4", "--frames", "5").exit_code == 0
    result = video(wan_dir, tmp_path / "lora.mp4", "--frames", "5", "--lora", f"{lora}:0.8")
    assert result.exit_code == 0, result.output
    assert not np.array_equal(read_frames(tmp_path / "plain.mp4"), read_frames(tmp_path / "lora.mp4"))
    info = json.loads(runner.invoke(app, ["info", str(tmp_path / "lora.mp4"), "--json"]).stdout)
    assert info["lora"] == [f"{lora}:0.8"]


def test_batch_renders_video_jobs_and_resumes(wan_dir, tmp_path):
    from vsf_cli.render.video import read_frames

    jobs = tmp_path / "clips.yaml"
    jobs.write_text(f"defaults: {{model: {wan_dir}, size: 32, steps: 1, frames: 5}}\n"
                    "seeds: [1, 2]\njobs:\n- {prompt: a red car, neg: wheels}\n- {prompt: a cat, neg: red}\n")
    result = runner.invoke(app, ["batch", str(jobs), "-o", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    clips = sorted((tmp_path / "run").glob("*.mp4"))
    assert len(clips) == 4 and all(read_frames(c).shape == (5, 32, 32, 3) for c in clips)
    assert all(c.with_suffix(".json").is_file() for c in clips)
    again = runner.invoke(app, ["batch", str(jobs), "-o", str(tmp_path / "run"), "--json"])
    assert json.loads(again.stdout)["skipped"] == 4


def test_cross_kernel_masks_the_padding_of_shorter_negatives():
    """Per-prompt negatives of different lengths: a row's padding keys must not count, so it equals that row alone."""
    from vsf_cli.guidance.attention import vsf_cross

    g = torch.Generator().manual_seed(0)
    q, k_p, v_p, k_n, v_n = (torch.randn(2, 2, n, 8, generator=g) for n in (5, 6, 6, 3, 3))
    mask = torch.tensor([[True, True, True], [True, False, False]])
    both = vsf_cross(q, (k_p, v_p), (k_n, v_n), scale=2.0, offset=0.3, negative_mask=mask)
    alone = vsf_cross(q[1:], (k_p[1:], v_p[1:]), (k_n[1:, :, :1], v_n[1:, :, :1]), scale=2.0, offset=0.3)
    assert torch.allclose(both[1:], alone, atol=1e-6) and not torch.allclose(both[:1], alone, atol=1e-3)


def test_image_to_video_from_a_first_frame(i2v_dir, wan_dir, tmp_path):
    from PIL import Image

    from vsf_cli.render.video import read_frames

    Image.new("RGB", (64, 32), (30, 90, 200)).save(tmp_path / "first.png")
    args = ["--image", str(tmp_path / "first.png"), "--frames", "5"]
    result = video(i2v_dir, tmp_path / "clip.mp4", *args, "--size", "48x32", "--json")
    assert result.exit_code == 0, result.output
    assert read_frames(tmp_path / "clip.mp4").shape == (5, 32, 48, 3)
    info = json.loads(runner.invoke(app, ["info", str(tmp_path / "clip.mp4"), "--json"]).stdout)
    assert info["image"] == str(tmp_path / "first.png") and len(info["image_sha256"]) == 64 and info["strength"] is None
    refused = video(wan_dir, tmp_path / "t2v.mp4", *args)
    assert refused.exit_code == 2 and "wan-i2v-14b" in refused.output
    missing = runner.invoke(app, ["video", PROMPT, "--model", str(i2v_dir), "-o", str(tmp_path / "none.mp4")])
    assert missing.exit_code == 2 and "--image" in missing.output


def test_image_to_video_size_follows_the_image():
    from vsf_cli.models.registry import MODELS
    from vsf_cli.settings import _first_frame

    class Portrait:
        size = (480, 832)

    assert _first_frame({"image": "x.png"}, Portrait(), MODELS["wan-i2v-14b"]) == {"width": 480, "height": 832}


def test_out_of_memory_mid_video_is_one_line_and_leaves_no_file(wan_dir, tmp_path, monkeypatch):
    from diffusers import WanPipeline

    def oom(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")

    monkeypatch.setattr(WanPipeline, "__call__", oom)
    result = video(wan_dir, tmp_path, "--frames", "5", "-q")
    assert result.exit_code == 1 and "--vae-tiling" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
