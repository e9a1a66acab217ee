"""Guidance on Qwen-Image and Qwen-Image-Edit: dense float64 oracles, the text mask and rotary, restore, the CLI."""

import math

import pytest
import torch
from typer.testing import CliRunner

from oracles import check_uncond_passes_run_plain, dense_joint, hooks_left
from vsf_cli import guidance
from vsf_cli.cli import app


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    from tiny import build_qwen_image

    return build_qwen_image(tmp_path_factory.mktemp("models") / "tiny-qwen-image")


@pytest.fixture
def qwen(qwen_dir):
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(qwen_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_edit(zero_cond_t=False):
    from tiny import build_qwen_image_edit

    pipe = build_qwen_image_edit(zero_cond_t=zero_cond_t)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def edit():
    """Qwen-Image-Edit-2509's layout. Each render VAE-encodes the reference at ~1024 x 1024 (the pipeline's own
    size), a few seconds even for the tiny VAE, so the edit renders are few."""
    return tiny_edit()


@pytest.fixture(scope="module", params=[False, True], ids=["2509", "2511"])
def any_edit(request):
    """Both edit layouts; 2511 modulates the reference image's tokens as at timestep 0 (`zero_cond_t`)."""
    return tiny_edit(request.param)


@torch.no_grad()
def prompt_states(pipe, text):
    """docs/method.md §13 written out: the pipeline's template around the text alone (no image), the encoder's last
    layer, the template's leading tokens dropped; one prompt, so no padding."""
    ids = pipe.tokenizer(pipe.prompt_template_encode.format(text), return_tensors="pt").input_ids
    states = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    return states[0, pipe.prompt_template_encode_start_idx:]


def rotate(x, freqs):
    """Rotary embedding as complex multiplication of channel pairs; x (batch, tokens, heads, d), freqs (tokens, d/2)."""
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(pairs * freqs[None, :, None].to(pairs.dtype)).flatten(3)


class DenseQwen:
    """One Qwen-Image block's attention in float64 from the method's table, queries [P, N, I] (text first).

    The text stream is [P (padded to the batch's longest), N (padded likewise)]; `valid` (batch, text) marks real
    text tokens. N's rotary rows are the text's first rows (a prompt's token k sits at the text's position k).
    "vsf": keys [P, N0, I, N1], N1 = N0's keys with values times -scale; I sees P, I and N1 (logits - offset),
    P sees P and I, N0 sees N0 and I. "nag" / "nasa": P and I see [P, I], N and I see [N, I]; the image output is
    NAG's per-token formula (`naive_nag`) or Z+ - s Z-.
    """

    def __init__(self, method, **params):
        self.method, self.params = method, params
        self.n_pos, self.valid = 0, None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):
        image_freqs, text_freqs = image_rotary_emb
        p, n_text = self.n_pos, encoder_hidden_states.shape[1]
        text_freqs = torch.cat([text_freqs[:p], text_freqs[:n_text - p]])

        def heads(x):
            return x.unflatten(-1, (attn.heads, -1))

        e = encoder_hidden_states
        q = torch.cat([rotate(attn.norm_added_q(heads(attn.add_q_proj(e))), text_freqs),
                       rotate(attn.norm_q(heads(attn.to_q(hidden_states))), image_freqs)], 1).transpose(1, 2)
        k = torch.cat([rotate(attn.norm_added_k(heads(attn.add_k_proj(e))), text_freqs),
                       rotate(attn.norm_k(heads(attn.to_k(hidden_states))), image_freqs)], 1).transpose(1, 2)
        v = torch.cat([heads(attn.add_v_proj(e)), heads(attn.to_v(hidden_states))], 1).double().transpose(1, 2)
        b, n_img = hidden_states.shape[:2]
        groups = ["P"] * p + ["N"] * (n_text - p) + ["I"] * n_img
        valid = torch.cat([self.valid, torch.ones(b, n_img, dtype=torch.bool)], 1)
        out = dense_joint(self.method, self.params, q, k, v, groups, valid)
        out = out.float().transpose(1, 2).flatten(2, 3)
        return attn.to_out[1](attn.to_out[0](out[:, n_text:])), attn.to_add_out(out[:, :n_text])



def with_oracle(pipe, negatives, processor, run):
    """Run `run()` with the oracle on every block and each batch item's negative (`prompt_states`, in order)
    appended to the text, padded to the longest negative; then restore."""
    t = pipe.transformer
    states = [prompt_states(pipe, text) for text in negatives]
    m = max(len(s) for s in states)

    def append(module, args, kwargs):
        e, mask = kwargs["encoder_hidden_states"], kwargs.get("encoder_hidden_states_mask")
        b = e.shape[0]
        items = [states[i * len(states) // b] for i in range(b)]
        neg = torch.stack([torch.cat([s, s.new_zeros(m - len(s), s.shape[1])]) for s in items]).to(e)
        neg_valid = torch.stack([torch.arange(m) < len(s) for s in items])
        valid = torch.ones(e.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
        processor.n_pos, processor.valid = e.shape[1], torch.cat([valid, neg_valid], 1)
        kwargs["encoder_hidden_states"] = torch.cat([e, neg], 1)
        kwargs["encoder_hidden_states_mask"] = processor.valid
        return args, kwargs

    original = dict(t.attn_processors)
    handle = t.register_forward_pre_hook(append, with_kwargs=True)
    t.set_attn_processor(processor)
    try:
        return run()
    finally:
        handle.remove()
        t.set_attn_processor(original)


def generate(pipe, prompt="a red bike", **kw):
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    return pipe(prompts, num_inference_steps=2, true_cfg_scale=1.0, height=32, width=32, output_type="pt",
                generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))], **kw).images


def transformer_inputs(text_lengths=(20, 12), images=((1, 4, 4),)):
    """A batch for the transformer alone: latents for `images` (the first is generated, the rest references),
    and text states whose first `text_lengths` tokens are real (the rest padding, as the pipeline pads)."""
    g = torch.Generator().manual_seed(0)
    b, n_text = len(text_lengths), max(text_lengths)
    n_img = sum(f * h * w for f, h, w in images)
    mask = torch.arange(n_text)[None] < torch.tensor(text_lengths)[:, None]
    return dict(hidden_states=torch.randn(b, n_img, 16, generator=g), timestep=torch.full((b,), 0.5),
                encoder_hidden_states=torch.randn(b, n_text, 32, generator=g),
                encoder_hidden_states_mask=None if mask.all() else mask.long(), img_shapes=[list(images)] * b,
                return_dict=False)


def test_negative_is_encoded_as_the_pipeline_encodes_a_prompt_alone(qwen, edit):
    from vsf_cli.models.families.qwenimage import encode_negative

    for pipe in (qwen, edit):
        for text in ("wheels", "a much longer negative prompt than the positive"):
            ours, doc = encode_negative(pipe, text), prompt_states(pipe, text)
            assert ours.shape == (1, *doc.shape) and torch.allclose(ours[0], doc, atol=1e-6), text
        assert encode_negative(pipe, "a much longer negative prompt", max_sequence_length=7).shape[1] == 7


def test_every_block_is_guided_and_restored(qwen):
    from vsf_cli.guidance.install import guided

    t = qwen.transformer

    def hooked(modules):
        return [guided(m)
                for m in modules]

    stock = dict(t.attn_processors)
    with guidance.apply(qwen, "vsf", negative="wheels"):
        assert hooked([b.attn for b in t.transformer_blocks] + [t.pos_embed]) == [True] * 3
        assert dict(t.attn_processors) == stock  # its own processors run
    assert not any(hooked([b.attn for b in t.transformer_blocks] + [t.pos_embed])) and not hooks_left(t)


def test_pipeline_equals_dense_oracle(qwen):
    with guidance.apply(qwen, "vsf", negative="wheels", scale=3.5, offset=0.1):
        fast = generate(qwen)
    dense = with_oracle(qwen, ["wheels"], DenseQwen("vsf", scale=3.5, offset=0.1), lambda: generate(qwen))
    assert torch.allclose(fast, dense, atol=1e-4), (fast - dense).abs().max()
    assert not torch.allclose(fast, generate(qwen), atol=1e-3)


PARAMS = [("vsf", {"scale": 2.0, "offset": 0.3}), ("nag", {"nag_scale": 4.0, "nag_tau": 2.5, "nag_alpha": 0.5}),
          ("nasa", {"nasa_scale": 0.5})]


@pytest.mark.parametrize("method, params", PARAMS)
def test_batch_of_unequal_prompts_and_negatives_equals_dense_oracle(qwen, method, params):
    """Prompts of 20 and 12 real tokens (the text mask pads the second) and negatives of unequal length."""
    negatives = ["wheels", "a much longer negative prompt than the positive one"]
    inputs = transformer_inputs()
    with torch.no_grad():
        with guidance.apply(qwen, method, negative=negatives, **params):
            fast = qwen.transformer(**inputs)[0]
        dense = with_oracle(qwen, negatives, DenseQwen(method, **params), lambda: qwen.transformer(**inputs)[0])
        stock = qwen.transformer(**inputs)[0]
    assert torch.allclose(fast, dense, atol=1e-4), (fast - dense).abs().max()
    for f, s in zip(fast, stock, strict=True):
        assert not torch.allclose(f, s, atol=1e-3)


@pytest.mark.parametrize("method, params", PARAMS[:2])
def test_edit_layout_equals_dense_oracle(any_edit, method, params):
    """The edit model's image stream [generated, reference] (and 2511's per-image modulation) against the oracle."""
    inputs, edit = transformer_inputs((9,), images=((1, 4, 4), (1, 2, 6))), any_edit
    with torch.no_grad():
        with guidance.apply(edit, method, negative="chairs", **params):
            fast = edit.transformer(**inputs)[0]
        dense = with_oracle(edit, ["chairs"], DenseQwen(method, **params), lambda: edit.transformer(**inputs)[0])
    assert torch.allclose(fast, dense, atol=1e-4), (fast - dense).abs().max()


def test_restore_is_bit_exact_and_infinite_offset_is_the_positive_alone(qwen):
    prompts = ["a red bike", "a much longer positive prompt about a red bike by a wall"]
    for prompt, negative in (("a red bike", "wheels"), (prompts, ["wheels", "a longer negative than that one"])):
        before = generate(qwen, prompt)
        with guidance.apply(qwen, "vsf", negative=negative, offset=math.inf):
            assert torch.allclose(generate(qwen, prompt), before, atol=1e-6)
        with guidance.apply(qwen, "vsf", negative=negative):
            assert not torch.allclose(generate(qwen, prompt), before, atol=1e-3)
        assert torch.equal(generate(qwen, prompt), before)
    assert not hooks_left(qwen.transformer)


@pytest.mark.parametrize("method, neutral", [("nag", {"nag_scale": 1.0}), ("nasa", {"nasa_scale": 0.0}),
                                             ("vsf", {"scale": 0.0, "offset": math.inf})])
def test_neutral_parameters_equal_no_guidance(qwen, method, neutral):
    before = generate(qwen)
    with guidance.apply(qwen, method, negative="wheels", **neutral):
        assert torch.allclose(generate(qwen), before, atol=1e-6)


@torch.no_grad()
def test_true_cfg_unconditional_pass_runs_plain_attention(qwen):
    def run():
        with guidance.apply(qwen, "vsf", negative="wheels"):
            qwen("a red bike", negative_prompt="blurry", true_cfg_scale=2.0, num_inference_steps=2, height=32,
                 width=32, generator=torch.Generator().manual_seed(0), output_type="latent")

    check_uncond_passes_run_plain(qwen, run)


def test_cfg_is_true_cfg_and_the_seed_codes_layout_is_refused(qwen):
    from vsf_cli.errors import UsageError

    with guidance.apply(qwen, "cfg", negative="wheels", cfg_scale=4.0) as extra:
        assert extra == {"negative_prompt": "wheels", "true_cfg_scale": 4.0}
    with pytest.raises(UsageError, match="Qwen-Image has only compat=paper"):
        with guidance.apply(qwen, "vsf", negative="wheels", compat="reference"):
            pass


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_image_inputs_are_guided(qwen, task):
    from PIL import Image

    from vsf_cli.models.families import get

    pipe = get("qwenimage").pipeline_class(task).from_pipe(qwen)
    inputs = {"image": Image.new("RGB", (32, 32), (200, 40, 30)), "strength": 0.75}
    if task == "inpaint":
        inputs["mask_image"] = Image.new("L", (32, 32), 255)

    def run():
        return pipe("a red bike", num_inference_steps=4, true_cfg_scale=1.0, height=32, width=32, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **inputs).images

    before = run()
    with guidance.apply(pipe, "vsf", negative="wheels"):
        assert not torch.allclose(run(), before, atol=1e-3)
    assert torch.equal(run(), before)


def edit_image():
    from PIL import Image

    return Image.new("RGB", (48, 32), (200, 40, 30))


def edit_run(pipe, **kw):
    return pipe(image=edit_image(), prompt="the same room", num_inference_steps=2, true_cfg_scale=1.0, height=32,
                width=32, generator=torch.Generator().manual_seed(0), output_type="pt", **kw).images


def test_edit_pipeline_is_guided_restored_and_infinite_offset_is_the_positive_alone(edit, monkeypatch):
    """Also: the negative is encoded from its text alone, so no reference-image token is ever flipped."""
    seen = []
    original = type(edit.text_encoder).forward

    def record(self, *args, **kwargs):
        seen.append(kwargs.get("pixel_values") is not None)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(edit.text_encoder), "forward", record)
    before = edit_run(edit)
    with guidance.apply(edit, "vsf", negative="chairs", offset=math.inf):
        assert torch.allclose(edit_run(edit), before, atol=1e-6)
    assert seen == [True, False, True]  # the positive's encoding sees the image, the negative's does not
    # The tiny model's 4096 reference tokens dilute the negative: a strong flip shows it.
    with guidance.apply(edit, "vsf", negative="chairs", scale=10.0, offset=0.0):
        assert not torch.allclose(edit_run(edit), before, atol=1e-3)
    assert torch.equal(edit_run(edit), before) and not hooks_left(edit.transformer)


@torch.no_grad()
def test_edit_true_cfg_unconditional_pass_runs_plain_attention(edit):
    def run():
        with guidance.apply(edit, "vsf", negative="chairs"):
            edit(image=edit_image(), prompt="the same room", negative_prompt="blurry", true_cfg_scale=2.0,
                 num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(0),
                 output_type="latent")

    check_uncond_passes_run_plain(edit, run)


def test_cli_end_to_end_with_a_local_lora(qwen_dir, tmp_path, monkeypatch):
    from tiny import build_qwen_image_lora

    from vsf_cli.render.metadata import read_metadata

    lora = build_qwen_image_lora(qwen_dir, tmp_path / "lora")
    monkeypatch.chdir(tmp_path)
    base = ["gen", "a red bike", "--neg", "wheels", "--model", str(qwen_dir), "--size", "32", "--steps", "2",
            "--seed", "5"]
    for extra, name in (([], "q.png"), (["--lora", f"{lora}:0.8"], "lora.png")):
        result = CliRunner().invoke(app, [*base, *extra, "-o", name])
        assert result.exit_code == 0, result.output
        assert "warning" not in result.output  # CFG is off as true_cfg_scale 1, and no guidance_scale is passed
    meta = read_metadata(tmp_path / "q.png")
    assert (meta["family"], meta["method"], meta["steps"], meta["lora"]) == ("qwenimage", "vsf", 2, [])
    assert read_metadata(tmp_path / "lora.png")["lora"] == [f"{lora}:0.8"]
    from PIL import Image

    assert Image.open("q.png").tobytes() != Image.open("lora.png").tobytes()


def test_cli_edits_an_image(tmp_path, monkeypatch):
    """`vsf gen --image` on an edit model. The stock edit pipeline cannot be saved or loaded here (its processor
    needs torchvision), so the folder names the pipeline class and loading hands back the in-memory tiny one."""
    import json

    from tiny import build_qwen_image_edit

    from vsf_cli.models import loading
    from vsf_cli.render.metadata import read_metadata

    folder = tmp_path / "tiny-edit"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPlusPipeline"}))
    pipe = build_qwen_image_edit()
    pipe.set_progress_bar_config(disable=True)
    monkeypatch.setattr(loading, "load_pipeline", lambda spec, **kw: pipe)
    monkeypatch.chdir(tmp_path)
    edit_image().save("room.png")
    args = ["gen", "the same room", "--neg", "chairs", "--model", str(folder), "--steps", "2", "--size", "32"]
    result = CliRunner().invoke(app, [*args, "--image", "room.png", "-o", "e.png"])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "e.png")
    assert (meta["family"], meta["method"], meta["strength"], meta["image"]) == ("qwenimage", "vsf", None, "room.png")
    result = CliRunner().invoke(app, [*args, "-o", "f.png"])
    assert result.exit_code == 2 and "edits an image: pass --image" in result.output
    result = CliRunner().invoke(app, [*args, "--image", "room.png", "--strength", "0.5", "-o", "f.png"])
    assert result.exit_code == 2 and "--strength is for image-to-image" in result.output


def test_registry_entries():
    from vsf_cli.models.registry import resolve

    lightning, edit, base = (resolve(n) for n in ("qwen-image-lightning", "qwen-image-edit-lightning", "qwen-image"))
    assert (lightning.hub_id, lightning.steps, lightning.guidance_scale, lightning.distilled) == \
        ("Qwen/Qwen-Image", 8, 0.0, True)
    assert lightning.loras == ("lightx2v/Qwen-Image-Lightning/Qwen-Image-Lightning-8steps-V1.1.safetensors",)
    assert dict(lightning.scheduler) == {"base_shift": math.log(3), "max_shift": math.log(3), "shift_terminal": None}
    assert (edit.hub_id, edit.task, edit.steps) == ("Qwen/Qwen-Image-Edit-2509", "edit", 8)
    assert (base.steps, base.loras, base.scheduler, base.distilled) == (50, (), (), False)
    assert resolve("Qwen/Qwen-Image") == base
    assert resolve("someone/Qwen-Image-Edit-2511-finetune").task == "edit"


def test_edit_model_without_torchvision_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util
    import json

    from vsf_cli.errors import UsageError
    from vsf_cli.models.loading import load_pipeline
    from vsf_cli.models.registry import resolve

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPlusPipeline"}))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real(name, *a))
    with pytest.raises(UsageError, match="needs torchvision: pip install torchvision"):
        load_pipeline(resolve(str(tmp_path)), device="cpu")
