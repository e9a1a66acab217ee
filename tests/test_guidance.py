"""VSF on SD3 joint attention: fast kernels against dense oracles, and the install/restore invariants."""

import math

import pytest
import torch

from conftest import load
from oracles import DenseVSF, generate, hooks_left, naive_contrast, oracle_run, run_with_oracle, unpadded_negative
from vsf_cli import guidance
from vsf_cli.errors import UsageError
from vsf_cli.guidance.attention import attention_lse, small_attention_lse, vsf_joint
from vsf_cli.guidance.oracle import vsf_joint_dense


def groups(*sizes, batch=2, heads=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(batch, heads, n, dim, generator=g) for _ in range(3)) for n in sizes]


def close(a, b, tol=1e-5):
    return all(torch.allclose(x, y, atol=tol, rtol=0) for x, y in zip(a, b, strict=True))


# --- kernels -------------------------------------------------------------------------------------------------


def test_attention_lse_matches_math():
    (q, k, v), = groups(37)
    out, lse = attention_lse(q, k, v)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    assert torch.allclose(lse, logits.logsumexp(-1), atol=1e-5)
    assert torch.allclose(out, torch.softmax(logits, -1) @ v, atol=1e-5)
    assert close(small_attention_lse(q, k, v), (out, lse))


@pytest.mark.parametrize("offset", [0.0, 0.1, 0.7, -0.5])
@pytest.mark.parametrize("scale", [0.0, 1.0, 3.5])
def test_vsf_kernel_equals_dense_mask(scale, offset):
    image, positive, negative = groups(40, 9, 5)
    fast = vsf_joint(image, positive, negative, scale=scale, offset=offset)
    dense = vsf_joint_dense(image, positive, negative, scale=scale, offset=offset)
    assert close(fast, dense)


def test_vsf_kernel_padding_mask_and_strided_inputs():
    image, positive, negative = groups(40, 9, 6)
    # projections arrive as transposed views, as in the processors
    image = tuple(x.transpose(1, 2).contiguous().transpose(1, 2) for x in image)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    fast = vsf_joint(image, positive, negative, scale=2.0, offset=0.2, negative_mask=mask)
    dense = vsf_joint_dense(image, positive, negative, scale=2.0, offset=0.2, negative_mask=mask)
    assert close(fast, dense)
    # the padded sample equals the same sample run alone with its three real negative tokens
    alone = vsf_joint(*[tuple(x[1:, :, :n] for x in g) for g, n in zip((image, positive, negative), (40, 9, 3))],
                      scale=2.0, offset=0.2)
    assert close([alone[0], alone[1]], [fast[0][1:], fast[1][1:]])


def test_vsf_kernel_bfloat16_close_to_oracle():
    image, positive, negative = groups(64, 9, 5)
    low = [tuple(x.bfloat16() for x in g) for g in (image, positive, negative)]
    fast = vsf_joint(*low, scale=3.5, offset=0.1)
    dense = vsf_joint_dense(image, positive, negative, scale=3.5, offset=0.1)
    assert all(f.dtype == torch.bfloat16 for f in fast)
    assert close([f.float() for f in fast], dense, tol=5e-2)


def test_infinite_offset_is_positive_only_attention():
    image, positive, negative = groups(30, 7, 4)
    fast = vsf_joint(image, positive, negative, scale=3.0, offset=math.inf)
    q, k, v = (torch.cat([a, b], 2) for a, b in zip(image, positive))
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(fast[0], plain[:, :, :30], atol=1e-6)


@pytest.mark.parametrize("cap", [math.inf, 0.5, 0.05])
@pytest.mark.parametrize("scale, offset", [(3.5, 0.1), (1.0, -0.5), (8.0, 0.7)])
def test_contrast_kernel_equals_its_formula(scale, offset, cap):
    """Joint and cross kernels against the naive float64 contrast; a padded negative key is seen by no query."""
    from vsf_cli.guidance.attention import vsf_cross

    image, positive, negative = groups(40, 9, 6)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    fast = vsf_joint(image, positive, negative, scale=scale, offset=offset, cap=cap, negative_mask=mask)
    keys, values = (torch.cat([a, b], 2) for a, b in zip(image[1:], positive[1:]))
    want = naive_contrast(image[0], keys, values, *negative[1:], scale, offset, cap, neg_valid=mask)
    assert torch.allclose(fast[0].double(), want, atol=1e-5)
    text = vsf_joint(image, positive, negative, scale=scale, offset=offset, cap=cap, negative_mask=mask, from_text=True)
    want_text = naive_contrast(image[0], keys, values, *negative[1:], scale, offset, cap, neg_valid=mask,
                               text=positive[1:])
    assert torch.allclose(text[0].double(), want_text, atol=1e-5) and not torch.allclose(text[0], fast[0], atol=1e-3)
    paper = vsf_joint(image, positive, negative, scale=scale, offset=offset, negative_mask=mask)
    assert close(fast[1:], paper[1:]) and not torch.allclose(fast[0], paper[0], atol=1e-3)  # text rows: the paper's
    cross = vsf_cross(image[0], positive[1:], negative[1:], scale=scale, offset=offset, cap=cap, negative_mask=mask)
    assert torch.allclose(cross.double(), naive_contrast(image[0], *positive[1:], *negative[1:], scale, offset, cap,
                                                         neg_valid=mask), atol=1e-5)


def test_text_contrast_drops_the_padding_of_a_shorter_caption():
    """With a context mask (captions of unequal length in one batch, as Qwen-Image calls), each item's push is
    taken from its own caption's tokens: item 1 equals the naive formula on its caption without the last 3 tokens."""
    image, positive, negative = groups(20, 8, 5)
    context = torch.ones(2, 28, dtype=torch.bool)
    context[1, -3:] = False
    fast = vsf_joint(image, positive, negative, scale=3.5, offset=0.1, cap=0.5, context_mask=context, from_text=True)
    for b, n in ((0, 8), (1, 5)):
        i, p, neg = ([x[b:b + 1] for x in group] for group in (image, positive, negative))
        keys, values = (torch.cat([a, c[:, :, :n]], 2) for a, c in zip(i[1:], p[1:]))
        want = naive_contrast(i[0], keys, values, *neg[1:], 3.5, 0.1, 0.5, text=(p[1][:, :, :n], p[2][:, :, :n]))
        assert torch.allclose(fast[0][b:b + 1].double(), want, atol=1e-5), b


def test_contrast_at_scale_zero_or_infinite_offset_is_the_positive_attention():
    from vsf_cli.guidance.attention import vsf_cross

    image, positive, negative = groups(30, 7, 4)
    q, k, v = (torch.cat([a, b], 2) for a, b in zip(image, positive))
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)[:, :, :30]
    for scale, offset in ((0.0, 0.1), (3.5, math.inf)):
        for from_text in (False, True):
            fast = vsf_joint(image, positive, negative, scale=scale, offset=offset, cap=0.5, from_text=from_text)
            assert torch.allclose(fast[0], plain, atol=1e-6)
        alone = torch.nn.functional.scaled_dot_product_attention(image[0], *positive[1:])
        assert torch.allclose(vsf_cross(image[0], positive[1:], negative[1:], scale=scale, offset=offset, cap=0.5),
                              alone, atol=1e-6)


def test_dense_mask_equals_the_table_cell_by_cell():
    """The oracle's mask, built from slices, against the table written out one cell at a time."""
    def loop_mask(oracle, n_img):
        p, n, beta = oracle.n_pos, oracle.n_neg, oracle.offset
        if oracle.layout == "paper":
            groups = {"I": n_img, "P": p, "N0": n}
            see = {"I": {"I": 0, "P": 0, "N1": -beta}, "P": {"I": 0, "P": 0}, "N0": {"I": 0, "N0": 0}}
        else:
            groups = {"I": n_img, "P": p, "Na": n, "Nb": n}
            see = {"I": {"I": 0, "P": 0, "Na": 0, "N1": -beta}, "P": {"I": 0, "P": 0, "Na": 0},
                   "Na": {"I": 0, "P": 0, "Na": 0}, "Nb": {"I": 0, "Nb": 0}}
        rows = [name for name, size in groups.items() for _ in range(size)]
        cols = [name for name, size in {**groups, "N1": n}.items() for _ in range(size)]
        m = torch.full((len(rows), len(cols)), float("-inf"), dtype=torch.float64)
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                if c in see[r]:
                    m[i, j] = see[r][c]
        return m

    for layout in ("paper", "reference"):
        oracle = DenseVSF(5, 3, 2.0, 0.25, layout)
        assert torch.equal(oracle.mask(7), loop_mask(oracle, 7)), layout


# --- pipelines: an independent dense oracle (tests/oracles.py) ---------------------------------------------------


@torch.no_grad()
def test_unpadded_negative_is_encoded_as_documented(sd3):
    from vsf_cli.models.families.sd3 import encode_negative

    for text in ("wheels", "a long negative prompt"):
        ours, doc = encode_negative(sd3, text), unpadded_negative(sd3, text)
        assert ours.shape == doc.shape and torch.allclose(ours, doc, atol=1e-6), text


@pytest.mark.parametrize("fixture", ["sd3", "sd3_dual"])
def test_pipeline_equals_dense_oracle(fixture, request):
    pipe = request.getfixturevalue(fixture)
    with guidance.apply(pipe, "vsf", negative="wheels", scale=3.5, offset=0.1):
        fast = generate(pipe)
    dense = oracle_run(pipe, "wheels", 3.5, 0.1)
    assert torch.allclose(fast, dense, atol=1e-4)
    assert not torch.allclose(fast, generate(pipe), atol=1e-3), "guidance had no effect"


@pytest.mark.parametrize("variant", ["contrast", "text-contrast"])
@pytest.mark.parametrize("fixture", ["sd3", "sd3_dual"])
def test_contrast_variants_on_the_pipeline_equal_their_dense_oracle(fixture, variant, request):
    from vsf_cli.guidance.vsf import CAP

    pipe = request.getfixturevalue(fixture)
    with guidance.apply(pipe, "vsf", negative="wheels", scale=3.5, offset=0.1, variant=variant):
        fast = generate(pipe)
    neg = unpadded_negative(pipe, "wheels")
    oracle = DenseVSF(77 + 256, neg.shape[1], 3.5, 0.1, cap=CAP, from_text=variant == "text-contrast")
    assert torch.allclose(fast, run_with_oracle(pipe, oracle, [neg]), atol=1e-4)
    for other in {"paper", "contrast", "text-contrast"} - {variant}:
        with guidance.apply(pipe, "vsf", negative="wheels", scale=3.5, offset=0.1, variant=other):
            assert not torch.allclose(fast, generate(pipe), atol=1e-3), other
    plain = generate(pipe)
    with guidance.apply(pipe, "vsf", negative="wheels", scale=0.0, variant=variant):
        assert torch.allclose(generate(pipe), plain, atol=1e-5)  # neutral: no push, no dilution


def test_reference_layout_equals_its_dense_oracle(sd3):
    with guidance.apply(sd3, "vsf", negative="wheels", scale=3.0, offset=0.08, compat="reference"):
        fast = generate(sd3)
    assert torch.allclose(fast, oracle_run(sd3, "wheels", 3.0, 0.08, layout="reference"), atol=1e-4)
    with guidance.apply(sd3, "vsf", negative="wheels", scale=3.0, offset=0.08):
        paper = generate(sd3)
    assert not torch.allclose(fast, paper, atol=1e-3)


@pytest.mark.parametrize("fixture", ["sd3", "sd3_dual"])
def test_leaving_restores_bit_exactly(fixture, request):
    pipe = request.getfixturevalue(fixture)
    processors = dict(pipe.transformer.attn_processors)
    before = generate(pipe)
    with guidance.apply(pipe, "vsf", negative="wheels"):
        generate(pipe)
    assert torch.equal(generate(pipe), before)
    assert pipe.transformer.attn_processors == processors
    assert not hooks_left(pipe.transformer)


def test_restores_after_an_error_inside_the_block(sd3):
    before = generate(sd3)
    with pytest.raises(RuntimeError), guidance.apply(sd3, "vsf", negative="wheels"):
        raise RuntimeError("boom")
    assert torch.equal(generate(sd3), before)


def test_huge_offset_equals_positive_only(sd3):
    with guidance.apply(sd3, "vsf", negative="wheels", scale=3.5, offset=1e9):
        guided = generate(sd3)
    assert torch.allclose(guided, generate(sd3), atol=1e-6)


def test_per_prompt_negatives_of_different_lengths_match_single_runs(sd3):
    prompts, negatives = ["a red bike", "a cat"], ["wheels", "a long negative prompt"]
    with guidance.apply(sd3, "vsf", negative=negatives, scale=3.0, offset=0.1):
        both = generate(sd3, prompt=prompts)
    for i in range(2):
        with guidance.apply(sd3, "vsf", negative=negatives[i], scale=3.0, offset=0.1):
            alone = generate(sd3, prompt=[prompts[i]], seed=i)
        assert torch.allclose(both[i], alone[0], atol=1e-4)


def test_several_negatives_equal_the_dense_oracle_of_their_tokens_joined(sd3):
    """Each negative is encoded on its own (with its own BOS/EOS) and all their tokens are flipped: the dense oracle
    over the documented encodings of "wheels" and "sun", joined along the tokens."""
    with guidance.apply(sd3, "vsf", negative=[("wheels", "sun")], scale=3.5, offset=0.1):
        fast = generate(sd3)
    joined = torch.cat([unpadded_negative(sd3, "wheels"), unpadded_negative(sd3, "sun")], dim=1)
    dense = run_with_oracle(sd3, DenseVSF(77 + 256, joined.shape[1], 3.5, 0.1), [joined])
    assert torch.allclose(fast, dense, atol=1e-4)
    with guidance.apply(sd3, "vsf", negative="wheels sun", scale=3.5, offset=0.1):
        assert not torch.allclose(fast, generate(sd3), atol=1e-3), "one string is not two negatives"


def test_several_negatives_per_prompt_in_a_batch(sd3):
    prompts, negatives = ["a red bike", "a cat"], [("wheels", "sun"), "a long negative prompt"]
    with guidance.apply(sd3, "vsf", negative=negatives):
        both = generate(sd3, prompt=prompts)
    with guidance.apply(sd3, "vsf", negative=[negatives[0]]):
        alone = generate(sd3, prompt=[prompts[0]])
    assert torch.allclose(both[0], alone[0], atol=1e-4)
    for bad in ([()], [("wheels", " ")], [["wheels", 3]]):
        with pytest.raises(UsageError, match="needs a non-empty negative"), guidance.apply(sd3, "vsf", negative=bad):
            pass


def test_num_images_per_prompt_repeats_negatives(sd3):
    with guidance.apply(sd3, "vsf", negative=["wheels"]):
        images = sd3(prompt="a red bike", num_images_per_prompt=2, num_inference_steps=1, guidance_scale=0.0,
                     height=32, width=32, output_type="pt").images
    assert images.shape[0] == 2


def test_guidance_scale_above_one_is_a_clear_error(sd3):
    with guidance.apply(sd3, "vsf", negative="wheels"), pytest.raises(UsageError, match="guidance_scale <= 1"):
        sd3(prompt="a bike", num_inference_steps=1, guidance_scale=5.0, height=32, width=32)


@pytest.mark.parametrize("params, message", [
    ({"scale": -1}, "scale"), ({"scale": 50}, "scale"), ({"offset": -9}, "offset"),
    ({"compat": "seed"}, "compat"), ({"alpha": 1}, "alpha"),
])
def test_parameter_ranges_checked_on_construction(params, message):
    with pytest.raises(UsageError, match=message):
        guidance.create("vsf", **params)


def test_unknown_method_and_missing_negative(sd3):
    with pytest.raises(UsageError, match="unknown method"):
        guidance.create("magic")
    with pytest.raises(UsageError, match="negative"), guidance.apply(sd3, "vsf", negative=""):
        pass


def test_works_with_a_lora_adapter(sd3):
    from peft import LoraConfig

    base = generate(sd3)
    sd3.transformer.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_k", "to_v", "add_k_proj"],
                                           init_lora_weights=False), adapter_name="test")
    with_lora = generate(sd3)
    assert not torch.allclose(base, with_lora, atol=1e-4)
    with guidance.apply(sd3, "vsf", negative="wheels", offset=1e9):
        assert torch.allclose(generate(sd3), with_lora, atol=1e-6)
    with guidance.apply(sd3, "vsf", negative="wheels"):
        fast = generate(sd3)
    assert torch.allclose(fast, oracle_run(sd3, "wheels", 3.5, 0.1), atol=1e-4)
    assert torch.equal(generate(sd3), with_lora)


def test_works_with_model_cpu_offload(sd3_dir):
    plain = load(sd3_dir)
    with guidance.apply(plain, "vsf", negative="wheels"):
        expected = generate(plain)
    offloaded = load(sd3_dir)
    offloaded.enable_model_cpu_offload(device="cpu")
    with guidance.apply(offloaded, "vsf", negative="wheels"):
        got = generate(offloaded)
    assert torch.allclose(got, expected, atol=1e-6)
