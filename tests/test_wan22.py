"""Wan 2.2: guidance on both A14B experts and on TI2V-5B against dense oracles, per-expert LoRAs, `vsf video`."""

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from oracles import (DenseCross, check_uncond_passes_run_plain, denoisers, hooks_left, kernel_calls_per_step,
                     negative_states)
from tiny import build_wan, build_wan22, letter_t5_tokenizer
from vsf_cli import guidance
from vsf_cli.cli import app

L = 24  # text context length (max_sequence_length); real Wan uses 512
PROMPT, NEG = "a red car", "wheels"
# The tiny scheduler's t at 2 steps: 999 (the high-noise expert, t >= 875), 750 (the low-noise one); at 4 steps
# 999, 900, 750, 500, two each.
STEPS = 2
CALL = {"num_frames": 5, "height": 32, "width": 32, "num_inference_steps": STEPS, "max_sequence_length": L,
        "output_type": "latent"}
FIRST_FRAME = Image.new("RGB", (32, 32), (200, 40, 30))
LAYOUTS = ("t2v", "i2v", "ti2v", "ti2v-image")  # A14B text / image to video; TI2V-5B from text or a first frame


@pytest.fixture(scope="session")
def wan22_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan22")
    return {kind: build_wan22(root / f"tiny-wan22-{kind}", kind) for kind in ("t2v", "i2v", "ti2v")}


def load(path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(params=LAYOUTS)
def layout(request, wan22_dirs):
    """(pipeline, call arguments) of one Wan 2.2 layout, freshly loaded."""
    from diffusers import WanImageToVideoPipeline

    name = request.param
    pipe = load(wan22_dirs[name.removesuffix("-image")])
    call = dict(CALL)
    if name.startswith("ti2v"):  # TI2V-5B: a 16x VAE and 2x2 patches, so sizes are multiples of 32
        call.update(height=64, width=64)
    if name == "ti2v-image":
        pipe = WanImageToVideoPipeline.from_pipe(pipe)
        pipe.set_progress_bar_config(disable=True)
    if name in ("i2v", "ti2v-image"):
        call["image"] = FIRST_FRAME
    return pipe, call


def render(pipe, call, guidance_scale=1.0, **kw):
    return pipe(prompt=kw.pop("prompt", PROMPT), guidance_scale=guidance_scale,
                generator=torch.Generator().manual_seed(0), **{**call, **kw}).frames


def oracle_render(pipe, call, context, processor):
    """The stock pipeline given the guided context directly, every expert's attn2 replaced by a dense processor."""
    for model in denoisers(pipe):
        for block in model.blocks:
            block.attn2.set_processor(processor)
    return render(pipe, call, prompt=None, prompt_embeds=context)


@torch.no_grad()
def test_the_tiny_a14b_experts_differ_and_split_the_steps(wan22_dirs):
    """What the per-expert tests rest on: two experts of different weights, each running half of the 4 steps."""
    pipe = load(wan22_dirs["t2v"])
    assert pipe.config.boundary_ratio == 0.875
    first, second = (dict(m.named_parameters()) for m in denoisers(pipe))
    assert not torch.equal(first["blocks.0.attn2.to_k.weight"], second["blocks.0.attn2.to_k.weight"])
    seen = []
    for model in denoisers(pipe):
        model.register_forward_pre_hook(lambda m, a, k: seen.append(m), with_kwargs=True)
    render(pipe, {**CALL, "num_inference_steps": 4})
    assert seen == [pipe.transformer] * 2 + [pipe.transformer_2] * 2


@torch.no_grad()
@pytest.mark.parametrize("layout, scale, offset", [("t2v", 1.0, 0.3), ("i2v", 3.0, -0.5), ("ti2v", 3.0, -0.5),
                                                   ("ti2v-image", 1.0, 0.3)], indirect=["layout"])
def test_vsf_equals_dense_oracle(layout, scale, offset):
    """Every expert's cross-attention is VSF's, and only the text context is flipped (Wan 2.2 I2V and TI2V add no
    image-context tokens; their image reaches the transformer through the latents and per-token timesteps)."""
    pipe, call = layout
    with guidance.apply(pipe, "vsf", negative=NEG, max_sequence_length=L, scale=scale, offset=offset):
        fast = render(pipe, call)
    negative = negative_states(pipe, NEG)
    n = negative.shape[1]
    positive = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=L - n)[0]
    dense = oracle_render(pipe, call, torch.cat([positive, negative], 1), DenseCross(n, scale=scale, offset=offset))
    assert torch.allclose(fast, dense, atol=2e-5, rtol=1e-4), (fast - dense).abs().max()
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    for model in denoisers(pipe):
        model.set_attn_processor(WanAttnProcessor())
    assert not torch.allclose(fast, render(pipe, call), atol=1e-3)  # the negative did something


NAG = {"nag_scale": 4.0, "nag_tau": 1.05, "nag_alpha": 0.5}  # a tau the tiny ratios exceed: some tokens capped


@torch.no_grad()
@pytest.mark.parametrize("layout, method, params", [("t2v", "nag", NAG), ("i2v", "nag", NAG),
                                                    ("ti2v", "nasa", {"nasa_scale": 0.3}), ("ti2v-image", "nag", NAG)],
                         indirect=["layout"])
def test_baselines_equal_dense_oracle(layout, method, params):
    """NAG and NASA pad the negative to L and append it; Wan 2.2 image-to-video has no image context to refuse them."""
    pipe, call = layout
    with guidance.apply(pipe, method, negative=NEG, max_sequence_length=L, **params):
        fast = render(pipe, call)
    positive = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=L)[0]
    dense = oracle_render(pipe, call, torch.cat([positive, negative_states(pipe, NEG, L)], 1),
                          DenseCross(L, method, **params))
    assert torch.allclose(fast, dense, atol=2e-5, rtol=1e-4), (fast - dense).abs().max()


@torch.no_grad()
@pytest.mark.parametrize("layout, method, params", [("t2v", "nag", {"nag_scale": 1.0}),
                                                    ("ti2v-image", "nasa", {"nasa_scale": 0.0})], indirect=["layout"])
def test_neutral_baselines_equal_no_guidance(layout, method, params):
    pipe, call = layout
    plain = render(pipe, call)
    with guidance.apply(pipe, method, negative=NEG, max_sequence_length=L, **params):
        neutral = render(pipe, call)
    assert torch.allclose(neutral, plain, atol=1e-6), (neutral - plain).abs().max()


@torch.no_grad()
def test_leaving_restores_both_experts_bit_exactly(layout):
    pipe, call = layout
    before = render(pipe, call)
    processors = [dict(model.attn_processors) for model in denoisers(pipe)]
    with guidance.apply(pipe, "vsf", negative=NEG, max_sequence_length=L):
        guided = render(pipe, call)
    assert not torch.equal(guided, before)
    assert torch.equal(render(pipe, call), before)
    assert [dict(model.attn_processors) for model in denoisers(pipe)] == processors
    assert not any(hooks_left(model) for model in denoisers(pipe))


@torch.no_grad()
def test_infinite_offset_equals_positive_alone(layout):
    """Both experts read only [positive + padding], L - n_N tokens, when the negative's logits are -inf."""
    pipe, call = layout
    n = negative_states(pipe, NEG).shape[1]
    with guidance.apply(pipe, "vsf", negative=NEG, max_sequence_length=L, offset=float("inf")):
        off = render(pipe, call)
    assert torch.allclose(off, render(pipe, call, max_sequence_length=L - n), atol=1e-6)


def guided_calls(pipe, monkeypatch, run) -> list[tuple[str, int]]:
    """Run `run()`; per transformer call in order: (which expert ran it, how many times VSF's kernel ran in it)."""
    from vsf_cli.guidance.vsf import VSF

    calls: list[list] = []

    def counting(self, make=VSF.cross_kernel):
        inner = make(self)

        def kernel(*args, **kwargs):
            calls[-1][1] += 1
            return inner(*args, **kwargs)
        return kernel

    monkeypatch.setattr(VSF, "cross_kernel", counting)
    names = [name for name in ("transformer", "transformer_2") if getattr(pipe, name, None) is not None]
    handles = [getattr(pipe, name).register_forward_pre_hook(lambda m, a, k, name=name: calls.append([name, 0]),
                                                              with_kwargs=True) for name in names]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return [tuple(call) for call in calls]


@torch.no_grad()
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_each_experts_steps_are_guided(wan22_dirs, monkeypatch, guidance_scale):
    """Both experts' conditional calls run VSF in their 2 blocks; with CFG, each expert's uncond call runs none."""
    pipe = load(wan22_dirs["t2v"])
    call = {**CALL, "num_inference_steps": 4}
    cfg = {"negative_prompt": "blurry"} if guidance_scale > 1 else {}

    def run():
        with guidance.apply(pipe, "vsf", negative=NEG, max_sequence_length=L):
            render(pipe, call, guidance_scale=guidance_scale, **cfg)

    per_step = [("transformer", 2)] * 2 + [("transformer_2", 2)] * 2
    if guidance_scale > 1:
        per_step = [c for expert, n in per_step for c in ((expert, n), (expert, 0))]
    assert guided_calls(pipe, monkeypatch, run) == per_step


@torch.no_grad()
@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_cfg_unconditional_passes_of_both_experts_run_plain(wan22_dirs, kind):
    """The CFG-pass rule per expert: each expert's "uncond" forward sees the stock model, its "cond" one VSF."""
    pipe = load(wan22_dirs[kind])
    call = {**CALL, "image": FIRST_FRAME} if kind == "i2v" else CALL

    def run():
        with guidance.apply(pipe, "vsf", negative=NEG, max_sequence_length=L):
            render(pipe, call, guidance_scale=3.0, negative_prompt="blurry")

    ran = check_uncond_passes_run_plain(pipe, run)
    assert ran == [pipe.transformer] * 2 + [pipe.transformer_2] * 2  # cond, uncond per step


@torch.no_grad()
@pytest.mark.parametrize("end, guided", [(1.0, [2] * 4), (0.5, [2, 2, 0, 0]), (0.75, [2, 2, 2, 0])])
def test_nag_end_counts_the_steps_of_both_experts(wan22_dirs, monkeypatch, end, guided):
    """nag_end is a fraction of all steps, whichever expert runs them: 0.5 of 4 is the high-noise expert's two."""
    pipe = load(wan22_dirs["t2v"])
    call = {**CALL, "num_inference_steps": 4}

    def run():
        with guidance.apply(pipe, "nag", negative=NEG, max_sequence_length=L, nag_end=end):
            render(pipe, call)

    assert kernel_calls_per_step(pipe, monkeypatch, run) == guided


# --- the negative is cut where the call cuts the positive ------------------------------------------------------

@torch.no_grad()
def test_a_tokenizer_without_model_max_length(tmp_path):
    """Saved without `model_max_length`, a tokenizer reports about 1e30 and `truncation=True, max_length=` that
    raises OverflowError; the negative is cut at the call's max_sequence_length instead, as the pipeline's
    positive is, and renders exactly as with the tokenizer that has the field (same pieces, same weights)."""
    from diffusers import WanPipeline

    broken = load(build_wan22(tmp_path / "no-max", tokenizer=letter_t5_tokenizer(model_max_length=None)))
    assert broken.tokenizer.model_max_length > 2**64
    with pytest.raises(OverflowError):
        broken.tokenizer(NEG, truncation=True, max_length=broken.tokenizer.model_max_length)
    sound = WanPipeline.from_pretrained(build_wan22(tmp_path / "with-max"))
    sound.set_progress_bar_config(disable=True)
    frames = {}
    for method in ("vsf", "nag"):
        for name, pipe in (("broken", broken), ("sound", sound)):
            with guidance.apply(pipe, method, negative=NEG, max_sequence_length=L):
                frames[method, name] = render(pipe, CALL)
        assert torch.equal(frames[method, "broken"], frames[method, "sound"])


@torch.no_grad()
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_image_families_cut_the_negative_where_the_call_cuts_the_positive(family, sd3_dir, tmp_path):
    """T5 at the call's max_sequence_length, unpadded (VSF) and padded (NAG); CLIP at its 77 positions. Tokenizers
    without `model_max_length` (SD3's CLIP-L and T5, Flux's T5) then change nothing."""
    import importlib

    from oracles import generate
    from tiny import build_flux, byte_clip_tokenizer

    pipe = load(sd3_dir if family == "sd3" else build_flux(tmp_path / "flux"))
    encode = importlib.import_module(f"vsf_cli.models.families.{family}").encode_negative
    long = "red car " * 40  # 81 T5 tokens, 322 CLIP ones
    cut = {padded: encode(pipe, long, padded=padded, max_sequence_length=16).shape[1] for padded in (False, True)}
    assert cut == ({False: 77 + 16, True: 77 + 16} if family == "sd3" else {False: 16, True: 16})

    def images():
        out = {}
        for method in ("vsf", "nag"):
            with guidance.apply(pipe, method, negative="wheels", max_sequence_length=16):
                out[method] = generate(pipe, max_sequence_length=16)
        return out

    before = images()
    swaps = {"tokenizer": byte_clip_tokenizer(model_max_length=None), "tokenizer_3": letter_t5_tokenizer(None)} \
        if family == "sd3" else {"tokenizer_2": letter_t5_tokenizer(None)}
    for name, tokenizer in swaps.items():
        assert tokenizer.model_max_length > 2**64
        setattr(pipe, name, tokenizer)
    after = images()
    assert all(torch.equal(before[m], after[m]) for m in before)


@torch.no_grad()
@pytest.mark.parametrize("family", ["zimage", "flux2_klein", "qwenimage"])
def test_chat_template_families_cut_the_negative_at_the_calls_length(family, tmp_path):
    """Z-Image, FLUX.2 and Qwen-Image encode through their pipeline's own encode_prompt, which takes the call's
    max_sequence_length; None is the pipeline's default, which a 40-word negative stays under."""
    import importlib

    import tiny

    build = {"zimage": tiny.build_zimage, "flux2_klein": tiny.build_flux2_klein, "qwenimage": tiny.build_qwen_image}
    pipe = load(build[family](tmp_path / family))
    encode = importlib.import_module(f"vsf_cli.models.families.{family}").encode_negative
    long = "red car " * 40
    whole = encode(pipe, long, max_sequence_length=None).shape[1]
    assert whole > 64
    assert encode(pipe, long, max_sequence_length=64).shape[1] <= 64


@torch.no_grad()
def test_a_long_negative_is_cut_to_the_context(wan22_dirs):
    from vsf_cli.models.families.wan import encode_negative

    pipe = load(wan22_dirs["t2v"])
    assert encode_negative(pipe, "red car " * 20, max_sequence_length=L).shape[1] == L
    assert encode_negative(pipe, "red car " * 20).shape[1] > L  # the pipeline's default, 512


# --- per-expert LoRAs ------------------------------------------------------------------------------------------

def build_expert_lora(model, folder, expert):
    """A random rank-2 LoRA for one expert of a tiny Wan 2.2 folder, saved as diffusers saves a Wan LoRA."""
    from diffusers import WanPipeline, WanTransformer3DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = WanTransformer3DModel.from_pretrained(model / expert)
    torch.manual_seed(1)
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"],
                                       init_lora_weights=False))
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def low_lora(wan22_dirs, tmp_path_factory):
    return build_expert_lora(wan22_dirs["t2v"], tmp_path_factory.mktemp("low-lora"), "transformer_2")


@torch.no_grad()
@pytest.mark.parametrize("prefix, holders", [("low=", {"transformer_2"}), ("high=", {"transformer"}),
                                             ("", {"transformer", "transformer_2"})])
def test_a_lora_goes_into_the_expert_it_names(wan22_dirs, low_lora, prefix, holders):
    """`low=FILE` loads into transformer_2 through diffusers' load_into_transformer_2, `high=FILE` into transformer,
    and a plain FILE into both; each run differs from the run without it."""
    from vsf_cli.models.loading import load_pipeline
    from vsf_cli.models.registry import resolve

    spec = resolve(str(wan22_dirs["t2v"]))
    plain = render(load_pipeline(spec, device="cpu"), CALL)
    pipe = load_pipeline(spec, device="cpu", loras=[f"{prefix}{low_lora}:0.8"])
    held = {part for part, adapters in pipe.get_list_adapters().items() if "lora0" in adapters}
    assert held == holders
    assert not torch.allclose(render(pipe, CALL), plain, atol=1e-4)


@torch.no_grad()
def test_each_expert_gets_its_own_lora_and_scale(wan22_dirs, low_lora, tmp_path):
    from vsf_cli.models.loading import load_pipeline
    from vsf_cli.models.registry import resolve

    high = build_expert_lora(wan22_dirs["t2v"], tmp_path / "high", "transformer")
    pipe = load_pipeline(resolve(str(wan22_dirs["t2v"])), device="cpu", loras=[f"high={high}:0.5", f"low={low_lora}"])
    assert pipe.get_list_adapters() == {"transformer": ["lora0"], "transformer_2": ["lora1"]}
    scales = {name: {m.scaling.get(a) for m in model.modules() if hasattr(m, "scaling") for a in ("lora0", "lora1")}
              for name, model in (("high", pipe.transformer), ("low", pipe.transformer_2))}
    assert scales == {"high": {0.5, None}, "low": {1.0, None}}
    with guidance.apply(pipe, "vsf", negative=NEG, max_sequence_length=L):  # guidance runs over the LoRA layers
        render(pipe, CALL)


runner = CliRunner()


def video(model, out, *args):
    """`vsf video` on a tiny model, seed 3, 2 steps, 5 frames of 32x32, into the file `out`."""
    base = ["video", PROMPT, "--neg", NEG, "--model", str(model), "--size", "32", "--steps", "2", "--seed", "3",
            "--frames", "5"]
    return runner.invoke(app, [*base, "-o", str(out), *args])


def one_line_error(result, code, needle):
    lines = result.output.strip().splitlines()
    return result.exit_code == code and len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output


def test_lora_prefixes_are_checked_before_anything_loads(wan22_dirs, wan_dir, sd3_dir, low_lora, tmp_path,
                                                           monkeypatch):
    from vsf_cli.models import loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the model loaded"))
    out = tmp_path / "x.mp4"
    assert one_line_error(video(wan22_dirs["t2v"], out, "--lora", f"mid={low_lora}"), 2,
                          "mid= is not an expert of Wan models (one of high=, low=)")
    assert one_line_error(video(wan_dir, out, "--lora", f"low={low_lora}"), 2, "has no transformer_2")
    assert one_line_error(video(wan22_dirs["t2v"], out, "--lora", f"low={tmp_path / 'missing.safetensors'}"), 2,
                          "does not exist")
    gen = runner.invoke(app, ["gen", PROMPT, "--model", str(sd3_dir), "--lora", f"high={low_lora}", "--dry-run"])
    assert one_line_error(gen, 2, "high= is not an expert of SD3 models (none)")


def test_a_prefixed_lora_on_a_single_transformer_is_one_line_at_load(wan_dir, low_lora):
    """Where the model is not on disk before the load (a first download), the load itself refuses."""
    from vsf_cli.errors import UsageError
    from vsf_cli.models.loading import load_pipeline
    from vsf_cli.models.registry import resolve

    with pytest.raises(UsageError, match="single transformer"):
        load_pipeline(resolve(str(wan_dir)), device="cpu", loras=[f"high={low_lora}"])


@pytest.fixture(scope="session")
def wan_dir(tmp_path_factory):
    return build_wan(tmp_path_factory.mktemp("models") / "tiny-wan21")


# --- `vsf video` on the Wan 2.2 layouts --------------------------------------------------------------------------

def test_video_on_every_layout(wan22_dirs, low_lora, tmp_path):
    """Two-expert text- and image-to-video, and TI2V-5B from text and from a first frame, with a per-expert LoRA
    recorded in the metadata."""
    from vsf_cli.render.video import read_frames

    FIRST_FRAME.save(tmp_path / "first.png")
    image = ["--image", str(tmp_path / "first.png")]
    runs = {"t2v": (wan22_dirs["t2v"], ["--lora", f"low={low_lora}:0.8"]), "i2v": (wan22_dirs["i2v"], image),
            "ti2v": (wan22_dirs["ti2v"], []), "ti2v-image": (wan22_dirs["ti2v"], image)}
    for name, (model, args) in runs.items():
        out = tmp_path / f"{name}.mp4"
        result = video(model, out, *args)
        assert result.exit_code == 0, (name, result.output)
        assert read_frames(out).shape == (5, 32, 32, 3)
    info = json.loads(runner.invoke(app, ["info", str(tmp_path / "t2v.mp4"), "--json"]).stdout)
    assert info["lora"] == [f"low={low_lora}:0.8"] and info["negative"] == NEG
    assert json.loads(runner.invoke(app, ["info", str(tmp_path / "ti2v-image.mp4"), "--json"]).stdout)["image"]


def test_a_tokenizer_without_model_max_length_through_the_cli(tmp_path):
    model = build_wan22(tmp_path / "no-max", tokenizer=letter_t5_tokenizer(model_max_length=None))
    for method in ("vsf", "nag"):
        result = video(model, tmp_path / f"{method}.mp4", "--method", method)
        assert result.exit_code == 0, result.output


def dry_run(*args):
    result = runner.invoke(app, ["video", PROMPT, "--neg", NEG, "--seed", "1", "--dry-run", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_folders_take_the_numbers_of_their_layout(wan22_dirs, wan_dir, tmp_path):
    """A folder's model_index.json tells its layout: a two-expert boundary or TI2V's expand_timesteps picks the
    matching entry's numbers, without that entry's LoRA."""
    keys = ("steps", "width", "height", "frames", "fps", "guidance_scale", "scale", "offset", "lora")
    for folder, entry in ((wan22_dirs["t2v"], "wan22-t2v-a14b"), (wan22_dirs["ti2v"], "wan22-ti2v-5b"),
                          (wan_dir, "wan-1.3b")):
        s = dry_run("--model", str(folder), "-o", str(tmp_path / "v.mp4"))
        registry = dry_run("--model", entry, "--no-default-lora", "-o", str(tmp_path / "v.mp4"))
        assert {k: s[k] for k in keys} == {**{k: registry[k] for k in keys}, "lora": []}, folder
    i2v = runner.invoke(app, ["video", PROMPT, "--model", str(wan22_dirs["i2v"]), "--dry-run"])
    assert one_line_error(i2v, 2, "--image")


def test_registry_entries(tmp_path):
    out = ["-o", str(tmp_path / "v.mp4")]
    lightning = "lightx2v/Wan2.2-Lightning/Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1/"
    s = dry_run("--model", "wan22-t2v-a14b", *out)
    assert (s["steps"], s["width"], s["height"], s["frames"], s["fps"], s["guidance_scale"], s["scale"], s["offset"]) \
        == (4, 1280, 720, 81, 16, 1.0, 1.0, 0.3)
    assert s["lora"] == [f"high={lightning}high_noise_model.safetensors:1.0",
                         f"low={lightning}low_noise_model.safetensors:1.0"]
    # Replacing one expert's LoRA: drop the defaults, name the one to keep and the new one.
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"")
    s = dry_run("--model", "wan22-t2v-a14b", "--no-default-lora", "--lora", f"high={lightning}high_noise_model"
                ".safetensors:1.0", "--lora", f"low={mine}:0.7", *out)
    assert s["lora"] == [f"high={lightning}high_noise_model.safetensors:1.0", f"low={mine}:0.7"]
    ti2v = dry_run("--model", "wan22-ti2v-5b", *out)
    assert (ti2v["steps"], ti2v["width"], ti2v["height"], ti2v["frames"], ti2v["fps"], ti2v["guidance_scale"],
            ti2v["lora"]) == (50, 1280, 704, 121, 24, 5.0, [])
    assert ti2v["default_lora"] is None  # it has none to switch off
    i2v = runner.invoke(app, ["video", PROMPT, "--model", "wan22-i2v-a14b", "--dry-run", *out])
    assert one_line_error(i2v, 2, "wan22-i2v-a14b makes video from an image: pass --image")


def test_ti2v_rules(tmp_path):
    """TI2V-5B: sizes are multiples of 32 (its VAE is 16x), and it was trained on 121 frames."""
    out = ["-o", str(tmp_path / "v.mp4")]
    bad = runner.invoke(app, ["video", PROMPT, "--model", "wan22-ti2v-5b", "--size", "848x480", "--dry-run", *out])
    assert one_line_error(bad, 2, "width 848 is not a multiple of 32")
    long = runner.invoke(app, ["video", PROMPT, "--model", "wan22-ti2v-5b", "--frames", "125", "--dry-run", *out])
    assert long.exit_code == 0 and "more than the 121 wan22-ti2v-5b was trained on" in long.output
    quiet = runner.invoke(app, ["video", PROMPT, "--model", "wan22-ti2v-5b", "--frames", "121", "--dry-run", *out])
    assert quiet.exit_code == 0 and "trained on" not in quiet.output
