"""Guidance on Z-Image: dense float64 oracles for VSF, NAG and NASA, the caption layout, restore, the CLI."""

import math

import pytest
import torch
from typer.testing import CliRunner

from oracles import dense_joint, hooks_left
from vsf_cli import guidance
from vsf_cli.cli import app
from vsf_cli.errors import UsageError

PAD_TO = 32  # Z-Image pads captions and images to multiples of 32 tokens


@pytest.fixture(scope="session")
def zimage_dir(tmp_path_factory):
    from tiny import build_zimage

    return build_zimage(tmp_path_factory.mktemp("models") / "tiny-zimage")


@pytest.fixture
def zimage(zimage_dir):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(zimage_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def padded(n):
    return -(-n // PAD_TO) * PAD_TO


@torch.no_grad()
def prompt_states(pipe, text):
    """docs/method.md §11 written out: the chat-templated text, Qwen3's second-to-last layer, no padding tokens."""
    chat = pipe.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=True)
    ids = pipe.tokenizer(chat, return_tensors="pt").input_ids
    return pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-2][0]


@torch.no_grad()
def refined_alone(pipe, text):
    """The text refined as the stock model refines a caption: the last context refiner's output and its rotary,
    caught in a stock forward whose only caption is `text` (padded to 32 by the model itself)."""
    t = pipe.transformer
    caught = {}

    def catch(module, args, output):
        caught["hidden"], caught["rotary"] = output[0], args[2][0]

    handle = t.context_refiner[-1].register_forward_hook(catch)
    try:
        t([torch.zeros(16, 1, 4, 4)], torch.tensor([0.5]), [prompt_states(pipe, text)])
    finally:
        handle.remove()
    return caught["hidden"], caught["rotary"]


def rotate(x, freqs):
    """Rotary embedding as complex products of channel pairs; x (batch, tokens, heads, d), freqs (batch, tokens, d/2)."""
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(pairs * freqs[:, :, None].to(pairs.dtype)).flatten(3)


class DenseZImage:
    """One main-layer attention of Z-Image in float64, from the method's table, over queries [I, P, N] (N last).

    "vsf": keys [I, P, N0, N1], N1 = N0's keys with values times -scale; I sees I, P and N1 (logits - offset),
    P sees I and P, N0 sees I and N0. "nag" / "nasa": I and P see [I, P], I and N see [I, N]; the image output is
    NAG's per-token formula (`naive_nag`) or Z+ - s Z-. Padding keys (the block's mask) are never seen.
    """

    def __init__(self, method, **params):
        self.method, self.params = method, params
        self.n_img = self.n_pos = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
        b, n = hidden_states.shape[:2]

        def heads(x):
            return x.unflatten(-1, (attn.heads, -1))

        q = rotate(attn.norm_q(heads(attn.to_q(hidden_states))).double(), freqs_cis).transpose(1, 2)
        k = rotate(attn.norm_k(heads(attn.to_k(hidden_states))).double(), freqs_cis).transpose(1, 2)
        v = heads(attn.to_v(hidden_states)).double().transpose(1, 2)
        valid = torch.ones(b, n, dtype=torch.bool) if attention_mask is None else attention_mask
        groups = ["I"] * self.n_img + ["P"] * self.n_pos + ["N"] * (n - self.n_img - self.n_pos)
        out = dense_joint(self.method, self.params, q, k, v, groups, valid)
        return attn.to_out[0](out.float().transpose(1, 2).flatten(2, 3))



def with_oracle(pipe, negatives, processor, run, keep_pads=False):
    """Run `run()` with the oracle on every main layer and each prompt's negative in the sequence, then restore.

    The negative is the text refined alone (`refined_alone`; its pads too when `keep_pads`), joined after the
    padded caption at layer 0 with its caption rotary, and dropped before the final layer; the model's own loop
    carries it in between. One negative per batch item, in order.
    """
    t = pipe.transformer
    refined = []
    for text in negatives:
        hidden, rotary = refined_alone(pipe, text)
        keep = len(hidden) if keep_pads else len(prompt_states(pipe, text))
        refined.append((hidden[:keep], rotary[:keep]))
    m = max(len(h) for h, _ in refined)
    layout = {}

    def call(module, args, kwargs):
        captions = args[2] if len(args) > 2 else kwargs["cap_feats"]
        layout["n_pos"] = max(padded(len(c)) for c in captions)

    def join(module, args):
        x, mask, freqs = args[:3]
        b, n = x.shape[:2]
        if module is t.layers[0]:
            layout["n"] = n
            processor.n_pos, processor.n_img = layout["n_pos"], n - layout["n_pos"]
            negative = [torch.cat([h, h.new_zeros(m - len(h), h.shape[1])]) for h, _ in refined]
            x = torch.cat([x, torch.stack(negative)], 1)
        else:
            n -= m
        stock_valid = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
        neg_valid = torch.stack([torch.arange(m) < len(h) for h, _ in refined])
        rotary = torch.stack([torch.cat([r, r.new_zeros(m - len(r), r.shape[1])]) for _, r in refined])
        return (x, torch.cat([stock_valid, neg_valid], 1), torch.cat([freqs, rotary], 1), *args[3:])

    def drop(module, args):
        return (args[0][:, :layout["n"]], *args[1:])

    original = processors(t)
    handles = [t.register_forward_pre_hook(call, with_kwargs=True)]
    handles += [layer.register_forward_pre_hook(join) for layer in t.layers]
    handles += [final.register_forward_pre_hook(drop) for final in t.all_final_layer.values()]
    for layer in t.layers:
        layer.attention.set_processor(processor)
    try:
        return run()
    finally:
        for handle in handles:
            handle.remove()
        for layer, processor in zip(t.layers, original, strict=True):
            layer.attention.set_processor(processor)


def processors(transformer):
    return [layer.attention.processor for layer in transformer.layers]


def generate(pipe, prompt="a red bike", **kw):
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)  # the pipeline rewrites a list it is given
    return pipe(prompts, num_inference_steps=2, guidance_scale=0.0, height=64, width=64, output_type="pt",
                generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))], **kw).images


def transformer_inputs(caption_lengths=(20, 40)):
    """A batch for the transformer alone: latents, timesteps, and captions of the given token lengths."""
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(16, 1, 8, 8, generator=g) for _ in caption_lengths]
    captions = [torch.randn(n, 32, generator=g) for n in caption_lengths]
    return x, torch.full((len(caption_lengths),), 0.5), captions


def test_negative_is_encoded_as_the_pipeline_encodes_a_prompt(zimage):
    from vsf_cli.models.families.zimage import encode_negative

    for text in ("wheels", "a much longer negative prompt than the positive"):
        ours, doc = encode_negative(zimage, text), prompt_states(zimage, text)
        assert ours.shape == (1, *doc.shape) and torch.allclose(ours[0], doc, atol=1e-6), text


@pytest.mark.parametrize("keep_pads", [False, True])
def test_prepared_negative_is_the_text_refined_as_a_caption_alone(zimage, keep_pads):
    """The carried negative equals what the stock forward makes of that text as its only caption."""
    from vsf_cli.models.families.zimage import encode_negative, prepare_negative

    texts = ["wheels", "a much longer negative prompt than the positive one, past one pad block"]
    encoded = [encode_negative(zimage, text)[0] for text in texts]
    tokens = torch.nn.utils.rnn.pad_sequence(encoded, batch_first=True)
    mask = torch.arange(tokens.shape[1])[None] < torch.tensor([len(e) for e in encoded])[:, None]
    with torch.no_grad():
        hidden, rotary, key_mask = prepare_negative(zimage.transformer, tokens, mask, keep_pads)
    for i, text in enumerate(texts):
        stock_hidden, stock_rotary = refined_alone(zimage, text)
        n = len(stock_hidden) if keep_pads else len(encoded[i])
        assert (hidden[i, :n] - stock_hidden[:n]).abs().max() < 1e-5, (hidden[i, :n] - stock_hidden[:n]).abs().max()
        assert torch.equal(rotary[i, :n], stock_rotary[:n])
        assert key_mask[i].sum() == n and not key_mask[i, n:].any()
    assert padded(len(encoded[1])) > PAD_TO  # the long one spans two pad blocks


def test_every_main_layer_is_guided_and_no_refiner(zimage):
    from vsf_cli.guidance.install import guided

    t = zimage.transformer

    def hooked(modules):
        return [guided(m)
                for m in modules]

    refiners = [*t.noise_refiner, *t.context_refiner]
    with guidance.apply(zimage, "vsf", negative="wheels"):
        assert hooked([layer.attention for layer in t.layers]) == [True, True]
        assert hooked(t.layers) == [True, True]  # the blocks that carry the negative
        assert not any(hooked([*refiners, *(r.attention for r in refiners)]))
    assert not any(hooked([*t.layers, *(layer.attention for layer in t.layers)])) and not hooks_left(t)


def test_pipeline_equals_dense_oracle(zimage):
    with guidance.apply(zimage, "vsf", negative="wheels", scale=3.5, offset=0.1):
        fast = generate(zimage)
    dense = with_oracle(zimage, ["wheels"], DenseZImage("vsf", scale=3.5, offset=0.1), lambda: generate(zimage))
    assert torch.allclose(fast, dense, atol=1e-4)
    assert not torch.allclose(fast, generate(zimage), atol=1e-3)


@pytest.mark.parametrize("method, params", [
    ("vsf", {"scale": 2.0, "offset": 0.3}),
    ("nag", {"nag_scale": 4.0, "nag_tau": 2.5, "nag_alpha": 0.5}),
    ("nasa", {"nasa_scale": 0.5}),
])
def test_batch_of_unequal_captions_and_negatives_equals_dense_oracle(zimage, method, params):
    """Captions of 20 and 40 tokens (32 and 64 padded, so the model masks) and negatives of unequal length."""
    negatives = ["wheels", "a much longer negative prompt than the positive one, past one pad block"]
    x, t, captions = transformer_inputs()
    with torch.no_grad():
        with guidance.apply(zimage, method, negative=negatives, **params):
            fast = zimage.transformer(x, t, captions, return_dict=False)[0]
        dense = with_oracle(zimage, negatives, DenseZImage(method, **params),
                            lambda: zimage.transformer(x, t, captions, return_dict=False)[0], keep_pads=method != "vsf")
        stock = zimage.transformer(x, t, captions, return_dict=False)[0]
    for f, d, s in zip(fast, dense, stock, strict=True):
        assert torch.allclose(f, d, atol=1e-4)
        assert not torch.allclose(f, s, atol=1e-3)


def test_restore_is_bit_exact_and_infinite_offset_is_the_positive_alone(zimage):
    stock = processors(zimage.transformer)
    prompts = ["a red bike", "a much longer positive prompt about a red bike by a wall"]
    for prompt, negative in (("a red bike", "wheels"), (prompts, ["wheels", "a longer negative than that one"])):
        before = generate(zimage, prompt)
        with guidance.apply(zimage, "vsf", negative=negative, offset=math.inf):
            assert torch.allclose(generate(zimage, prompt), before, atol=1e-6)
        with guidance.apply(zimage, "vsf", negative=negative):
            assert not torch.allclose(generate(zimage, prompt), before, atol=1e-3)
        assert torch.equal(generate(zimage, prompt), before)
    assert processors(zimage.transformer) == stock and not hooks_left(zimage.transformer)


@pytest.mark.parametrize("method, neutral", [("nag", {"nag_scale": 1.0}), ("nasa", {"nasa_scale": 0.0}),
                                             ("vsf", {"scale": 0.0, "offset": math.inf})])
def test_neutral_parameters_equal_no_guidance(zimage, method, neutral):
    before = generate(zimage)
    with guidance.apply(zimage, method, negative="wheels", **neutral):
        assert torch.allclose(generate(zimage), before, atol=1e-6)


def test_cfg_is_the_pipelines_own_with_w_minus_one(zimage):
    """Z-Image computes cond + g (cond - uncond): CFG's w reaches it as g = w - 1, and VSF refuses g > 0."""
    with guidance.apply(zimage, "cfg", negative="wheels", cfg_scale=4.5) as extra:
        assert extra == {"negative_prompt": "wheels", "guidance_scale": 3.5}
    with guidance.apply(zimage, "vsf", negative="wheels"), pytest.raises(UsageError, match="guidance_scale <= 0"):
        zimage("a red bike", num_inference_steps=1, guidance_scale=1.0, height=64, width=64, output_type="pt")
    with pytest.raises(UsageError, match="compat=reference"):
        with guidance.apply(zimage, "vsf", negative="wheels", compat="reference"):
            pass


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_image_inputs_are_guided(zimage, task):
    from PIL import Image

    from vsf_cli.models.families import get

    pipe = get("zimage").pipeline_class(task)(**zimage.components)
    pipe.set_progress_bar_config(disable=True)
    inputs = {"image": Image.new("RGB", (64, 64), (200, 40, 30)), "strength": 0.75}
    if task == "inpaint":
        inputs["mask_image"] = Image.new("L", (64, 64), 255)

    def run():
        return pipe("a red bike", num_inference_steps=4, guidance_scale=0.0, height=64, width=64, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **inputs).images

    before = run()
    with guidance.apply(pipe, "vsf", negative="wheels"):
        assert not torch.allclose(run(), before, atol=1e-3)
    assert torch.equal(run(), before)


def test_cli_end_to_end(zimage_dir, tmp_path, monkeypatch):
    from vsf_cli.render.metadata import read_metadata

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["gen", "a red bike", "--neg", "wheels", "--model", str(zimage_dir), "--size",
                                      "64", "--steps", "2", "--seed", "5", "-o", "z.png"])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "z.png")
    assert (meta["family"], meta["method"], meta["steps"], meta["guidance_scale"]) == ("zimage", "vsf", 2, 0.0)
    result = CliRunner().invoke(app, ["gen", "a red bike", "--neg", "wheels", "--model", str(zimage_dir), "--size",
                                      "64", "--guidance-scale", "1", "-o", "y.png"])
    assert result.exit_code == 2 and "--guidance-scale <= 0" in result.output
    result = CliRunner().invoke(app, ["gen", "a red bike", "--neg", "wheels", "--model", str(zimage_dir), "--compat",
                                      "reference", "-o", "x.png"])
    assert result.exit_code == 2 and "only compat=paper" in result.output and "loading" not in result.output


def test_batch_and_img2img_through_the_cli(zimage_dir, tmp_path):
    import json

    import yaml
    from PIL import Image

    from vsf_cli.render.metadata import read_metadata

    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"defaults": {"model": str(zimage_dir), "steps": 2, "size": 64},
                                    "jobs": [{"prompt": "a red bike", "neg": "wheels"},
                                             {"prompt": "a cat on a long red bike by a wall", "neg": "grass"}]}))
    result = CliRunner().invoke(app, ["batch", str(jobs), "-o", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["done"] == 2
    Image.new("RGB", (64, 64), (200, 40, 30)).save(tmp_path / "in.png")
    result = CliRunner().invoke(app, ["gen", "a red bike", "--neg", "wheels", "--model", str(zimage_dir), "--image",
                                      str(tmp_path / "in.png"), "--strength", "0.5", "--steps", "4",
                                      "-o", str(tmp_path / "i2i.png")])
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "i2i.png")["strength"] == 0.5


def test_registry_entry():
    from vsf_cli.models.registry import resolve

    turbo = resolve("zimage-turbo")
    assert (turbo.family, turbo.hub_id, turbo.steps) == ("zimage", "Tongyi-MAI/Z-Image-Turbo", 9)
    assert turbo.guidance_scale == 0.0
    assert (turbo.width, turbo.height, turbo.distilled) == (1024, 1024, True)
    assert resolve("someone/Z-Image-Turbo-finetune").family == "zimage"
