"""Guidance on FLUX.2 klein and dev: float64 dense oracles for VSF, NAG and NASA, restore, CFG, image inputs, the CLI."""

import math

import pytest
import torch
from typer.testing import CliRunner

from oracles import check_uncond_passes_run_plain, dense_joint, hooks_left
from vsf_cli import guidance
from vsf_cli.cli import app
from vsf_cli.errors import UsageError

KLEIN_LAYERS, DEV_LAYERS = (9, 18, 27), (10, 20, 30)  # the hidden layers each pipeline stacks for a prompt
LONG = "a much longer negative prompt than the other one, about wheels and spokes"


@pytest.fixture(scope="session")
def klein_dir(tmp_path_factory):
    from tiny import build_flux2_klein

    return build_flux2_klein(tmp_path_factory.mktemp("models") / "tiny-flux2-klein")


@pytest.fixture(scope="session")
def klein_base_dir(tmp_path_factory):
    from tiny import build_flux2_klein

    return build_flux2_klein(tmp_path_factory.mktemp("models") / "tiny-flux2-klein-base", seed=5, distilled=False)


@pytest.fixture(scope="session")
def dev_dir(tmp_path_factory):
    from tiny import build_flux2_dev

    return build_flux2_dev(tmp_path_factory.mktemp("models") / "tiny-flux2-dev")


def load(folder):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def klein(klein_dir):
    return load(klein_dir)


@pytest.fixture
def dev(dev_dir):
    return load(dev_dir)


@pytest.fixture(params=["klein", "dev"])
def flux2(request, klein_dir, dev_dir):
    return load(klein_dir if request.param == "klein" else dev_dir)


@torch.no_grad()
def prompt_states(pipe, text):
    """docs/method.md §12 written out, sharing no code with vsf_cli: the prompt's chat-formatted tokens without
    padding, through the text encoder, the pipeline's three hidden layers joined on channels; (tokens, 3 * hidden)."""
    from diffusers import Flux2Pipeline
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    if isinstance(pipe, Flux2Pipeline):
        chat = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
                {"role": "user", "content": [{"type": "text", "text": text}]}]
        ids = pipe.tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
        layers = DEV_LAYERS
    else:
        chat = pipe.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=False)
        ids = pipe.tokenizer(chat, return_tensors="pt").input_ids
        layers = KLEIN_LAYERS
    hidden = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states
    return torch.cat([hidden[i][0] for i in layers], dim=-1)


class DenseFlux2:
    """One FLUX.2 joint attention in float64 from the method's table, over queries [P, N, I] (text first).

    "vsf": keys [P, N0, I, N1], N1 = N0's rotated keys with values times -scale; I sees P, I and N1 (logits -
    offset), P sees P and I, N0 sees N0 and I. "nag" / "nasa": P and I see [P, I], N and I see [N, I]; the image
    output is NAG's per-token formula (`naive_nag`) or Z+ - s Z-. `neg_valid` (batch, n_N) hides a shorter
    negative's padding from every query.
    """

    def __init__(self, method, **params):
        self.method, self.params = method, params
        self.n_pos, self.neg_valid = 0, None

    def attend(self, q, k, v):
        """q, k, v (batch, tokens, heads, head_dim) after RoPE -> (batch, tokens, heads * head_dim), float32."""
        q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
        b, n_neg = self.neg_valid.shape
        groups = ["P"] * self.n_pos + ["N"] * n_neg + ["I"] * (q.shape[2] - self.n_pos - n_neg)
        valid = torch.cat([torch.ones(b, self.n_pos, dtype=torch.bool), self.neg_valid,
                           torch.ones(b, len(groups) - self.n_pos - n_neg, dtype=torch.bool)], 1)
        out = dense_joint(self.method, self.params, q, k, v, groups, valid)
        return out.float().transpose(1, 2).flatten(2, 3)



class DoubleStream:
    """A double-stream block's attention around the oracle: text and image projected apart, joined [text, image]."""

    def __init__(self, oracle):
        self.oracle = oracle

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        def heads(x):
            return x.unflatten(-1, (-1, attn.head_dim))

        e = encoder_hidden_states
        q = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(e))), attn.norm_q(heads(attn.to_q(hidden_states)))], 1)
        k = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(e))), attn.norm_k(heads(attn.to_k(hidden_states)))], 1)
        v = torch.cat([heads(attn.add_v_proj(e)), heads(attn.to_v(hidden_states))], 1)
        q, k = (apply_rotary_emb(x, image_rotary_emb, sequence_dim=1) for x in (q, k))
        out = self.oracle.attend(q, k, v)
        text, image = out[:, :e.shape[1]], out[:, e.shape[1]:]
        return attn.to_out[1](attn.to_out[0](image)), attn.to_add_out(text)


class SingleStream:
    """A single-stream block's attention around the oracle: q, k, v and the MLP input from one fused projection."""

    def __init__(self, oracle):
        self.oracle = oracle

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        projected = attn.to_qkv_mlp_proj(hidden_states)
        qkv, mlp = projected.split([3 * attn.inner_dim, projected.shape[-1] - 3 * attn.inner_dim], dim=-1)
        q, k, v = (x.unflatten(-1, (-1, attn.head_dim)) for x in qkv.chunk(3, dim=-1))
        q, k = (apply_rotary_emb(norm(x), image_rotary_emb, sequence_dim=1) for norm, x in ((attn.norm_q, q), (attn.norm_k, k)))
        return attn.to_out(torch.cat([self.oracle.attend(q, k, v), attn.mlp_act_fn(mlp)], dim=-1))


def negative_tokens(pipe, negatives, padded):
    """Each negative as the oracle puts it in the sequence: unpadded states (VSF), or the pipeline's own padded
    encoding of that text as a prompt (NAG, NASA); zero-filled to the longest, with the real tokens marked."""
    states = [pipe.encode_prompt(text)[0][0] if padded else prompt_states(pipe, text) for text in negatives]
    m = max(len(s) for s in states)
    tokens = torch.stack([torch.cat([s, s.new_zeros(m - len(s), s.shape[1])]) for s in states])
    return tokens, torch.stack([torch.arange(m) < len(s) for s in states])


def with_oracle(pipe, negatives, oracle, run):
    """Run `run()` with the oracle in every block and each prompt's negative after the positive, then restore.

    The negative's k-th token gets text position (0, 0, 0, k), the one the k-th token of a prompt has.
    """
    with torch.no_grad():
        tokens, valid = negative_tokens(pipe, negatives, padded=oracle.method != "vsf")
    t = pipe.transformer

    def append(module, args, kwargs):
        e, ids = kwargs["encoder_hidden_states"], kwargs["txt_ids"]
        ids = ids[0] if ids.ndim == 3 else ids
        neg_ids = torch.zeros(tokens.shape[1], 4, dtype=ids.dtype)
        neg_ids[:, 3] = torch.arange(tokens.shape[1])
        repeat = e.shape[0] // len(negatives)
        kwargs["encoder_hidden_states"] = torch.cat([e, tokens.repeat_interleave(repeat, 0).to(e.dtype)], 1)
        kwargs["txt_ids"] = torch.cat([ids, neg_ids], 0)
        oracle.n_pos, oracle.neg_valid = e.shape[1], valid.repeat_interleave(repeat, 0)
        return args, kwargs

    original = processors(t)
    handle = t.register_forward_pre_hook(append, with_kwargs=True)
    for block in t.transformer_blocks:
        block.attn.set_processor(DoubleStream(oracle))
    for block in t.single_transformer_blocks:
        block.attn.set_processor(SingleStream(oracle))
    try:
        return run()
    finally:
        handle.remove()
        for attn, processor in zip(attentions(t), original, strict=True):
            attn.set_processor(processor)


def attentions(transformer):
    return [b.attn for b in transformer.transformer_blocks] + [b.attn for b in transformer.single_transformer_blocks]


def processors(transformer):
    return [attn.processor for attn in attentions(transformer)]


def generate(pipe, prompt="a red bike", **kw):
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    kw.setdefault("guidance_scale", 4.0 if type(pipe).__name__ == "Flux2Pipeline" else 1.0)
    return pipe(prompt=prompts, num_inference_steps=2, height=32, width=32, output_type="pt",
                generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))], **kw).images


METHODS = [("vsf", {"scale": 3.5, "offset": 0.1}), ("vsf", {"scale": 2.0, "offset": -0.5}),
           ("nag", {"nag_scale": 10.0, "nag_tau": 5.0, "nag_alpha": 0.9}), ("nasa", {"nasa_scale": 0.5})]
# NAG at NAG++-like strength: dev's padded negative shares the system message and ~450 pad tokens with the
# positive, so at the default s 4, a 0.125 the tiny model barely moves.


def test_negative_is_encoded_as_the_pipeline_encodes_a_prompt(flux2):
    family = guidance_family(flux2)
    for text in ("wheels", LONG):
        ours, doc = family.encode_negative(flux2, text), prompt_states(flux2, text)
        assert ours.shape == (1, *doc.shape) and torch.allclose(ours[0], doc, atol=1e-5), text
        assert doc.shape[0] < 512
        padded = family.encode_negative(flux2, text, padded=True)
        assert torch.equal(padded, flux2.encode_prompt(text)[0])  # NAG and NASA: exactly the positive's encoding
    assert family.encode_negative(flux2, "wheels", padded=True, max_sequence_length=64).shape[1] == 64


def guidance_family(pipe):
    from vsf_cli.models import families

    return families.of(pipe)


def test_every_double_and_single_block_is_guided(klein):
    from vsf_cli.guidance.install import guided

    def hooked():
        return [guided(a)
                for a in attentions(klein.transformer)]

    stock = [type(p) for p in processors(klein.transformer)]
    assert {t.__name__ for t in stock} == {"Flux2AttnProcessor", "Flux2ParallelSelfAttnProcessor"}
    with guidance.apply(klein, "vsf", negative="wheels"):
        assert hooked() == [True] * 4
        assert [type(p) for p in processors(klein.transformer)] == stock  # their own processors run
    assert not any(hooked()) and not hooks_left(klein.transformer)


@pytest.mark.parametrize("method, params", METHODS)
def test_pipeline_equals_dense_oracle(flux2, method, params):
    seen = []
    handle = flux2.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["guidance"]), with_kwargs=True)
    with guidance.apply(flux2, method, negative="wheels", **params):
        fast = generate(flux2)
    handle.remove()
    dense = with_oracle(flux2, ["wheels"], DenseFlux2(method, **params), lambda: generate(flux2))
    assert (fast - dense).abs().max() < 1e-4, (fast - dense).abs().max()
    assert (fast - generate(flux2)).abs().max() > 1e-3
    if type(flux2).__name__ == "Flux2Pipeline":  # dev's guidance embedding reaches the transformer as the positive's
        assert all(g is not None and torch.all(g == 4.0) for g in seen)


@pytest.mark.parametrize("method, params", METHODS[::2] + METHODS[3:])
def test_batch_of_negatives_of_different_lengths_equals_dense_oracle(klein, method, params):
    prompts, negatives = ["a red bike", "a cat on a long red bike by a wall"], ["wheels", LONG]
    with guidance.apply(klein, method, negative=negatives, **params):
        fast = generate(klein, prompts)
    dense = with_oracle(klein, negatives, DenseFlux2(method, **params), lambda: generate(klein, prompts))
    stock = generate(klein, prompts)
    for f, d, s in zip(fast, dense, stock, strict=True):
        assert (f - d).abs().max() < 1e-4, (f - d).abs().max()
        assert (f - s).abs().max() > 1e-3


def test_restore_is_bit_exact_and_infinite_offset_is_the_positive_alone(flux2):
    stock = processors(flux2.transformer)
    prompts = ["a red bike", "a much longer positive prompt about a red bike by a wall"]
    for prompt, negative in (("a red bike", "wheels"), (prompts, ["wheels", LONG])):
        before = generate(flux2, prompt)
        with guidance.apply(flux2, "vsf", negative=negative, offset=math.inf):
            assert torch.allclose(generate(flux2, prompt), before, atol=1e-6)
        with guidance.apply(flux2, "vsf", negative=negative):
            assert not torch.allclose(generate(flux2, prompt), before, atol=1e-3)
        assert torch.equal(generate(flux2, prompt), before)
    assert processors(flux2.transformer) == stock and not hooks_left(flux2.transformer)


@pytest.mark.parametrize("method, neutral", [("nag", {"nag_scale": 1.0}), ("nasa", {"nasa_scale": 0.0}),
                                             ("vsf", {"scale": 0.0, "offset": math.inf})])
def test_neutral_parameters_equal_no_guidance(klein, method, neutral):
    before = generate(klein)
    with guidance.apply(klein, method, negative="wheels", **neutral):
        assert torch.allclose(generate(klein), before, atol=1e-6)


@torch.no_grad()
def test_klein_base_cfg_pass_runs_unguided(klein_base_dir):
    """klein base runs CFG (guidance_scale > 1, empty negative) as its own "uncond" forward: that one runs stock."""
    pipe = load(klein_base_dir)
    assert not pipe.config.is_distilled

    def run():
        with guidance.apply(pipe, "vsf", negative="wheels"):
            generate(pipe, guidance_scale=4.0)

    check_uncond_passes_run_plain(pipe, run)


def test_cfg_with_the_negative_is_refused(flux2):
    with pytest.raises(UsageError, match="use vsf, nag or nasa"):
        with guidance.apply(flux2, "cfg", negative="wheels"):
            pass
    assert not hooks_left(flux2.transformer)


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_image_inputs_are_guided(klein, task):
    """klein's img2img is its own image conditioning (a reference it edits from); inpainting has its pipeline."""
    from PIL import Image

    from vsf_cli.models.families import get

    pipe = get("flux2_klein").pipeline_class(task).from_pipe(klein)
    pipe.set_progress_bar_config(disable=True)
    side = 32 if task == "inpaint" else 64  # a reference image has 64 px a side at least
    inputs = {"image": Image.new("RGB", (side, side), (200, 40, 30))}
    if task == "inpaint":
        inputs |= {"mask_image": Image.new("L", (side, side), 255), "strength": 0.75}
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["hidden_states"].shape[1]),
                                                        with_kwargs=True)

    def run():
        return pipe(prompt="a red bike", num_inference_steps=4, guidance_scale=1.0, height=32, width=32,
                    output_type="pt", generator=torch.Generator().manual_seed(0), **inputs).images

    before = run()
    handle.remove()
    assert calls[0] == 64 + (side // 4) ** 2  # the 8x8 latent tokens, then the reference image's
    with guidance.apply(pipe, "vsf", negative="wheels"):
        assert not torch.allclose(run(), before, atol=1e-3)
    assert torch.equal(run(), before)


def test_dev_image_conditioning_is_guided(dev):
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 40, 30))
    before = generate(dev, image=image)
    with guidance.apply(dev, "vsf", negative="wheels"):
        assert not torch.allclose(generate(dev, image=image), before, atol=1e-3)
    assert torch.equal(generate(dev, image=image), before)


def test_cli_end_to_end(klein_dir, tmp_path, monkeypatch):
    from PIL import Image

    from vsf_cli.render.metadata import read_metadata

    monkeypatch.chdir(tmp_path)
    base = ["gen", "a red bike", "--neg", "wheels", "--model", str(klein_dir), "--size", "32", "--steps", "2",
            "--seed", "5"]
    result = CliRunner().invoke(app, [*base, "-o", "k.png"])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "k.png")
    assert (meta["family"], meta["method"], meta["steps"], meta["guidance_scale"]) == ("flux2_klein", "vsf", 2, 1.0)
    Image.new("RGB", (64, 64), (200, 40, 30)).save(tmp_path / "in.png")
    result = CliRunner().invoke(app, [*base, "--image", "in.png", "--size", "64", "-o", "edit.png"])
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "edit.png").get("strength") is None
    Image.new("L", (64, 64), 255).save(tmp_path / "mask.png")
    result = CliRunner().invoke(app, [*base, "--image", "in.png", "--mask", "mask.png", "--strength", "0.5",
                                      "-o", "inpaint.png"])
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "inpaint.png")["strength"] == 0.5


@pytest.mark.parametrize("args, message", [
    (["--model", "flux2-klein-4b", "--method", "cfg"], "FLUX.2 [klein]'s pipelines take no negative prompt"),
    (["--model", "flux2-dev", "--method", "cfg"], "FLUX.2 [dev] has no classifier-free guidance"),
    (["--model", "flux2-klein-4b", "--image", "in.png", "--strength", "0.5"], "--strength: FLUX.2 [klein] conditions"),
    (["--model", "flux2-dev", "--image", "in.png", "--mask", "in.png"], "FLUX.2 [dev] has no inpainting pipeline"),
])
def test_impossible_combinations_are_one_line_before_any_load(args, message, tmp_path, monkeypatch):
    from PIL import Image

    import vsf_cli.models.loading as loading

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 32)).save(tmp_path / "in.png")
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    result = CliRunner().invoke(app, ["gen", "a red bike", "--neg", "wheels", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_registry_entries():
    from vsf_cli.models.registry import resolve

    k4, k9, dev = resolve("flux2-klein-4b"), resolve("flux2-klein-9b"), resolve("flux2-dev")
    for spec in (k4, k9):
        assert (spec.family, spec.steps, spec.width, spec.height, spec.guidance_scale) == ("flux2_klein", 4, 1024, 1024, 1.0)
        assert spec.distilled and spec.max_sequence_length == 512
    assert (k4.hub_id, k4.gated, k9.hub_id) == ("black-forest-labs/FLUX.2-klein-4B", False, "black-forest-labs/FLUX.2-klein-9B")
    assert "Non-Commercial" in k9.note and "Non-Commercial" not in k4.note
    assert (dev.family, dev.hub_id, dev.gated, dev.steps, dev.guidance_scale) == ("flux2_dev", "black-forest-labs/FLUX.2-dev", True, 50, 4.0)
    assert "untested" in k4.note and "untested" in dev.note
    # Hub ids outside the table go to the family with the longest matching name piece.
    assert resolve("someone/FLUX.2-klein-base-4B").family == "flux2_klein"
    assert resolve("someone/flux2-dev-merged").family == "flux2_dev"
    assert resolve("someone/my-flux-finetune").family == "flux"
