"""VSF on Flux: dual- and single-stream blocks against a dense oracle, rotary ids, restore, and the CLI."""

import math

import pytest
import torch
from typer.testing import CliRunner

from oracles import check_uncond_passes_run_plain, hooks_left, kernel_calls_per_step
from vsf_cli import guidance
from vsf_cli.cli import app


@pytest.fixture(scope="session")
def flux_dir(tmp_path_factory):
    from tiny import build_flux

    return build_flux(tmp_path_factory.mktemp("models") / "tiny-flux")


@pytest.fixture
def flux(flux_dir):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(flux_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class DenseFluxVSF:
    """Flux VSF from the paper's table, sharing no code with vsf_cli: sequence [P, N0, I] plus N1, one dense mask."""

    def __init__(self, n_pos, n_neg, scale, offset):
        self.n_pos, self.n_neg, self.scale, self.offset = n_pos, n_neg, scale, offset

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        def heads(x):
            return x.unflatten(-1, (attn.heads, -1))

        q, k, v = attn.norm_q(heads(attn.to_q(hidden_states))), attn.norm_k(heads(attn.to_k(hidden_states))), \
            heads(attn.to_v(hidden_states))
        if encoder_hidden_states is not None:
            e = encoder_hidden_states
            q = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(e))), q], 1)
            k = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(e))), k], 1)
            v = torch.cat([heads(attn.add_v_proj(e)), v], 1)
        q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1).transpose(1, 2).double()
        k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1).transpose(1, 2).double()
        v = v.transpose(1, 2).double()
        p, n = self.n_pos, self.n_neg
        n_img = q.shape[2] - p - n
        neg = slice(p, p + n)
        k = torch.cat([k, k[:, :, neg]], 2)  # N1: the rotated keys of N0
        v = torch.cat([v, -self.scale * v[:, :, neg]], 2)
        rows = ["P"] * p + ["N0"] * n + ["I"] * n_img
        cols = rows + ["N1"] * n
        see = {"I": {"I": 0, "P": 0, "N1": -self.offset}, "P": {"I": 0, "P": 0}, "N0": {"I": 0, "N0": 0}}
        mask = torch.tensor([[see[r].get(c, -math.inf) for c in cols] for r in rows], dtype=torch.float64)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask
        out = (torch.softmax(logits, -1) @ v).float().transpose(1, 2).flatten(2, 3)
        if encoder_hidden_states is None:
            return out
        text, image = out[:, :p + n], out[:, p + n:]
        return attn.to_out[1](attn.to_out[0](image)), attn.to_add_out(text)


@torch.no_grad()
def unpadded_negative(pipe, text):
    """docs/method.md §3 written out, sharing no code with vsf_cli: the negative's T5 states with EOS, no padding."""
    ids = pipe.tokenizer_2(text, return_tensors="pt").input_ids
    assert ids[0, -1] == pipe.tokenizer_2.eos_token_id
    return pipe.text_encoder_2(ids).last_hidden_state


def test_unpadded_negative_is_encoded_as_documented(flux):
    from vsf_cli.models.families.flux import encode_negative

    for text in ("wheels", "a long negative prompt"):
        ours, doc = encode_negative(flux, text), unpadded_negative(flux, text)
        assert ours.shape == doc.shape and torch.allclose(ours, doc, atol=1e-6), text


def with_oracle(pipe, negative, scale, offset, run):
    neg = unpadded_negative(pipe, negative)

    def hook(module, args, kwargs):
        e, ids = kwargs["encoder_hidden_states"], kwargs["txt_ids"]
        kwargs["encoder_hidden_states"] = torch.cat([e, neg.to(e).expand(e.shape[0], -1, -1)], 1)
        kwargs["txt_ids"] = torch.cat([ids, ids[: neg.shape[1]]], 0)  # the positive's first rows, as documented
        processor.n_pos = e.shape[1]
        return args, kwargs

    processor = DenseFluxVSF(0, neg.shape[1], scale, offset)
    original = dict(pipe.transformer.attn_processors)
    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    pipe.transformer.set_attn_processor(processor)
    try:
        return run()
    finally:
        handle.remove()
        pipe.transformer.set_attn_processor(original)


def generate(pipe, **kw):
    kw.setdefault("num_inference_steps", 2)
    return pipe("a red bike", guidance_scale=0.0, height=32, width=32, max_sequence_length=64,
                generator=torch.Generator().manual_seed(0), output_type="pt", **kw).images


def test_every_dual_and_single_block_is_guided(flux):
    from vsf_cli.guidance.install import guided

    def hooked():
        blocks = [*flux.transformer.transformer_blocks, *flux.transformer.single_transformer_blocks]
        return [guided(b.attn) for b in blocks]

    stock = {type(p) for p in flux.transformer.attn_processors.values()}
    with guidance.apply(flux, "vsf", negative="wheels"):
        assert hooked() == [True] * 4
        assert {type(p) for p in flux.transformer.attn_processors.values()} == stock  # its own processors run
    assert not any(hooked())


def test_pipeline_equals_dense_oracle(flux):
    with guidance.apply(flux, "vsf", negative="wheels", scale=3.5, offset=0.1):
        fast = generate(flux)
    dense = with_oracle(flux, "wheels", 3.5, 0.1, lambda: generate(flux))
    assert torch.allclose(fast, dense, atol=1e-4)
    assert not torch.allclose(fast, generate(flux), atol=1e-3)


def test_nonzero_text_positions_get_matching_rotary(flux):
    """Text ids that are not all zero: N0 and N1 must share the rotary of the rows the negative was given."""
    t = flux.transformer
    g = torch.Generator().manual_seed(3)
    inputs = dict(hidden_states=torch.randn(1, 64, 16, generator=g), encoder_hidden_states=torch.randn(1, 12, 32, generator=g),
                  pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                  img_ids=torch.randint(0, 8, (64, 3), generator=g).float(),
                  txt_ids=torch.randint(0, 8, (12, 3), generator=g).float())
    with torch.no_grad():
        with guidance.apply(flux, "vsf", negative="wheels", scale=2.0, offset=0.2):
            fast = t(**inputs).sample
        dense = with_oracle(flux, "wheels", 2.0, 0.2, lambda: t(**inputs).sample)
    assert torch.allclose(fast, dense, atol=1e-4)


def test_restore_is_bit_exact_and_huge_offset_is_positive_only(flux):
    processors = dict(flux.transformer.attn_processors)
    before = generate(flux)
    with guidance.apply(flux, "vsf", negative="wheels", offset=1e9):
        assert torch.allclose(generate(flux), before, atol=1e-6)
    assert torch.equal(generate(flux), before)
    assert flux.transformer.attn_processors == processors and not hooks_left(flux.transformer)


@torch.no_grad()
def test_true_cfg_unconditional_pass_runs_plain_attention(flux):
    """With true CFG the pipeline's "uncond" forward must see the stock model, the "cond" one VSF."""
    def run():
        with guidance.apply(flux, "vsf", negative="wheels"):
            flux("a red bike", negative_prompt="blurry", true_cfg_scale=2.0, num_inference_steps=2, height=32,
                 width=32, generator=torch.Generator().manual_seed(0), output_type="latent")

    check_uncond_passes_run_plain(flux, run)


@pytest.mark.parametrize("method", ["nag", "nasa", "cfg"])
def test_baselines_run_on_flux_and_restore(flux, method):
    before = generate(flux)
    with guidance.apply(flux, method, negative="wheels") as extra:
        assert extra == ({"negative_prompt": "wheels", "true_cfg_scale": 4.5} if method == "cfg" else {})
        guided = flux("a red bike", num_inference_steps=2, height=32, width=32, max_sequence_length=64,
                      generator=torch.Generator().manual_seed(0), output_type="pt", guidance_scale=0.0, **extra).images
    assert not torch.allclose(guided, before, atol=1e-4)
    assert torch.equal(generate(flux), before)


@pytest.mark.parametrize("end, guided, true_cfg", [(1.0, 8, False), (0.5, 4, False), (0.5, 4, True), (0.0, 0, True)])
def test_nag_end_guides_the_first_steps(flux, monkeypatch, end, guided, true_cfg):
    """Flux's transformer gets t / 1000, which a window by timestep read as 'always off' below nag_end 1."""
    cfg = {"true_cfg_scale": 2.0, "negative_prompt": "blurry"} if true_cfg else {}
    images = {}

    def run(method, **params):
        with guidance.apply(flux, method, negative="wheels", **params):
            images[method] = generate(flux, num_inference_steps=8, **cfg)

    counts = kernel_calls_per_step(flux, monkeypatch, lambda: run("nag", nag_end=end))
    assert counts == [4] * guided + [0] * (8 - guided)  # 2 dual + 2 single blocks, conditional pass only
    if end == 0:
        run("none")
        assert torch.equal(images["nag"], images["none"])


def test_nag_end_on_img2img_is_a_fraction_of_the_steps_run(flux, monkeypatch):
    from diffusers import FluxImg2ImgPipeline
    from PIL import Image

    pipe = FluxImg2ImgPipeline(**flux.components)
    pipe.set_progress_bar_config(disable=True)

    def run():
        with guidance.apply(pipe, "nag", negative="wheels", nag_end=0.5):
            pipe("a red bike", image=Image.new("RGB", (32, 32), (200, 40, 30)), strength=0.5, num_inference_steps=8,
                 height=32, width=32, guidance_scale=0.0, max_sequence_length=64,
                 generator=torch.Generator().manual_seed(0), output_type="pt")

    assert kernel_calls_per_step(pipe, monkeypatch, run) == [4, 4, 0, 0]


def test_cli_end_to_end(flux_dir, tmp_path, monkeypatch):
    from vsf_cli.render.metadata import read_metadata

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["gen", "a red bike", "--neg", "wheels", "--model", str(flux_dir), "--size", "32",
                                      "--steps", "2", "--seed", "5", "-o", "f.png"])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "f.png")
    assert (meta["family"], meta["method"], meta["steps"], meta["max_sequence_length"]) == ("flux", "vsf", 2, 256)


def test_registry_entries():
    from vsf_cli.models.registry import resolve

    schnell, dev = resolve("flux-schnell"), resolve("flux-dev")
    assert (schnell.steps, schnell.guidance_scale, schnell.gated) == (4, 0.0, False)
    assert (dev.gated, dev.guidance_scale) == (True, 3.5)
    assert resolve("someone/my-flux-finetune").family == "flux"
