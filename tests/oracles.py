"""Independent reference processors for the tests: dense masks and naive loops, sharing no code with vsf_cli."""

import math

import torch


def naive_nag(s, tau, a):
    """NAG's per-token formula as its paper writes it, one token at a time; rows are (tokens, heads * head_dim)."""
    def combine(z_pos, z_neg):
        out = torch.empty_like(z_pos)
        for t in range(z_pos.shape[0]):
            g = s * z_pos[t] - (s - 1) * z_neg[t]  # extrapolate away from the negative
            r = g.abs().sum() / z_pos[t].abs().sum()  # L1 over all heads' channels of this token
            g = g * min(r, tau) / r  # cap the norm ratio at tau
            out[t] = a * g + (1 - a) * z_pos[t]  # blend into the positive
        return out
    return combine


def dense_joint(method, params, q, k, v, groups, valid):
    """One joint attention in float64 from the method's table, over named token groups.

    q, k, v are (batch, heads, tokens, d) float64; `groups` names each token "I" (image), "P" (positive) or "N"
    (negative), in the sequence's order; `valid` (batch, tokens) is False for padding keys, which no query sees.
    "vsf": keys [sequence, N1], N1 = N's keys with values times -scale; I sees I, P and N1 (logits - offset), P sees
    I and P, N sees I and N. "nag" / "nasa": I and P see [I, P], I and N see [I, N]; the image output is NAG's
    per-token formula (`naive_nag`) or Z+ - s Z-.
    """
    if method == "vsf":
        neg = [i for i, g in enumerate(groups) if g == "N"]
        k = torch.cat([k, k[:, :, neg]], 2)
        v = torch.cat([v, -params["scale"] * v[:, :, neg]], 2)
        cols = groups + ["N1"] * len(neg)
        see = {"I": {"I": 0, "P": 0, "N1": -params["offset"]}, "P": {"I": 0, "P": 0}, "N": {"I": 0, "N": 0}}
        mask = torch.tensor([[see[r].get(c, -math.inf) for c in cols] for r in groups], dtype=torch.float64)
        keys_valid = torch.cat([valid, valid[:, neg]], 1)
        mask = mask[None, None] + torch.where(keys_valid, 0.0, -math.inf).double()[:, None, None, :]
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask, -1) @ v

    def attend(rows, keys):
        cols = torch.tensor([g in keys for g in groups])[None] & valid
        logits = q[:, :, rows] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return torch.softmax(logits.masked_fill(~cols[:, None, None, :], -math.inf), -1) @ v

    image = [g == "I" for g in groups]
    out = torch.empty_like(q)
    out[:, :, [g == "P" for g in groups]] = attend([g == "P" for g in groups], "IP")
    out[:, :, [g == "N" for g in groups]] = attend([g == "N" for g in groups], "IN")
    z_pos, z_neg = attend(image, "IP"), attend(image, "IN")
    if method == "nasa":
        out[:, :, image] = z_pos - params["nasa_scale"] * z_neg
        return out
    b, h, n_img, d = z_pos.shape
    combine = naive_nag(params["nag_scale"], params["nag_tau"], params["nag_alpha"])
    rows = [x.transpose(1, 2).reshape(b, n_img, h * d) for x in (z_pos, z_neg)]
    guided = torch.stack([combine(zp, zn) for zp, zn in zip(*rows, strict=True)])
    out[:, :, image] = guided.reshape(b, n_img, h, d).transpose(1, 2)
    return out


def generate(pipe, prompt="a red bike", seed=0, steps=2, guidance_scale=0.0, height=32, width=32, **kw):
    """A seeded tiny render; one generator per prompt so batched and single runs match."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompt) if isinstance(prompt, list) else 1)]
    return pipe(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance_scale, height=height, width=width,
                generator=generators, output_type="pt", **kw).images


def projections(attn, hidden_states, text):
    """SD3 joint-attention q/k/v for image and text, as (batch, heads, tokens, head_dim), in float64."""
    b = hidden_states.shape[0]
    q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    dim = q.shape[-1] // attn.heads

    def split(t):
        return t.view(b, -1, attn.heads, dim).transpose(1, 2)

    qi, ki, vi = attn.norm_q(split(q)), attn.norm_k(split(k)), split(v)
    qt = attn.norm_added_q(split(attn.add_q_proj(text)))
    kt = attn.norm_added_k(split(attn.add_k_proj(text)))
    vt = split(attn.add_v_proj(text))
    return [x.double() for x in (qi, ki, vi, qt, kt, vt)]


def finish(attn, image, text):
    """(batch, heads, tokens, head_dim) outputs back through the block's output projections."""
    b, h, _, d = image.shape
    image = image.float().transpose(1, 2).reshape(b, -1, h * d)
    text = text.float().transpose(1, 2).reshape(b, -1, h * d)
    if not attn.context_pre_only:
        text = attn.to_add_out(text)
    return attn.to_out[1](attn.to_out[0](image)), text


def softmax_attention(q, k, v, mask=None):
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits + mask
    return torch.softmax(logits, -1) @ v


def spans(groups: dict[str, int]) -> dict[str, slice]:
    """Consecutive groups of tokens, in order, as slices: {"I": 4, "P": 2} -> {"I": slice(0, 4), "P": slice(4, 6)}."""
    out, start = {}, 0
    for name, size in groups.items():
        out[name] = slice(start, start + size)
        start += size
    return out


def naive_contrast(q, k_plus, v_plus, k_neg, v_neg, scale, offset, cap, neg_valid=None, text=None):
    """VSF's contrast variants as docs/method.md §1.4 writes them, in float64, one token at a time for the cap.

    s = the share the negative keys (logits - offset) take in one softmax beside the other keys; Z+ = attention
    over the other keys alone, Z- over the negative keys alone; Z = Z+ + scale * s * (R - Z-), the push scaled
    down per token so that its L1 norm over all heads' channels is at most cap times Z+'s. R is Z+, or with
    `text` = (keys, values) of the positive prompt (text-contrast), the attention over those keys alone.
    `neg_valid` (batch, negative keys) is False for padding, which no query sees.
    """
    q, k_plus, v_plus, k_neg, v_neg = (x.double() for x in (q, k_plus, v_plus, k_neg, v_neg))
    root = math.sqrt(q.shape[-1])
    plus = q @ k_plus.transpose(-1, -2) / root
    minus = q @ k_neg.transpose(-1, -2) / root - offset
    if neg_valid is not None:
        minus = minus.masked_fill(~neg_valid[:, None, None, :], -math.inf)
    joined = torch.softmax(torch.cat([plus, minus], -1), -1)
    share = joined[..., plus.shape[-1]:].sum(-1, keepdim=True)
    z_plus, z_minus = torch.softmax(plus, -1) @ v_plus, torch.softmax(minus, -1) @ v_neg
    reference = z_plus
    if text is not None:
        k_text, v_text = (x.double() for x in text)
        reference = torch.softmax(q @ k_text.transpose(-1, -2) / root, -1) @ v_text
    push = scale * share * (reference - z_minus)
    for b in range(q.shape[0]):
        for t in range(q.shape[2]):
            ratio = push[b, :, t].abs().sum() / z_plus[b, :, t].abs().sum()
            if ratio > cap:
                push[b, :, t] *= cap / ratio
    return z_plus + push


class DenseVSF:
    """VSF written from the paper's table: full q/k/v, one dense mask, softmax.

    `layout` "paper": stream [P, N0]; "reference": the seed code's [P, Na, Nb] (docs/method.md §2.3, its table).
    """

    def __init__(self, n_pos, n_neg, scale, offset, layout="paper", cap=None, from_text=False):
        self.n_pos, self.n_neg, self.scale, self.offset, self.layout = n_pos, n_neg, scale, offset, layout
        self.cap = cap  # a number: the image rows are a contrast variant's (`naive_contrast`), not the table's
        self.from_text = from_text  # text-contrast: the push is taken from the positive prompt's readout

    def mask(self, n_img):
        """The table as an additive mask: 0 where a query group sees a key group, -offset on I -> N1, -inf elsewhere."""
        p, n = self.n_pos, self.n_neg
        if self.layout == "paper":  # queries [I, P, N0], keys [I, P, N0, N1]
            groups = {"I": n_img, "P": p, "N0": n}
            see = {"I": {"I": 0, "P": 0, "N1": -self.offset}, "P": {"I": 0, "P": 0}, "N0": {"I": 0, "N0": 0}}
        else:  # queries [I, P, Na, Nb], keys [I, P, Na, Nb, Nflip]
            groups = {"I": n_img, "P": p, "Na": n, "Nb": n}
            see = {"I": {"I": 0, "P": 0, "Na": 0, "N1": -self.offset}, "P": {"I": 0, "P": 0, "Na": 0},
                   "Na": {"I": 0, "P": 0, "Na": 0}, "Nb": {"I": 0, "Nb": 0}}
        rows, cols = spans(groups), spans({**groups, "N1": n})
        m = torch.full((sum(groups.values()), sum(groups.values()) + n), float("-inf"), dtype=torch.float64)
        for r, seen in see.items():
            for c, value in seen.items():
                m[rows[r], cols[c]] = value
        return m

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        n_img = hidden_states.shape[1]
        qi, ki, vi, qt, kt, vt = projections(attn, hidden_states, encoder_hidden_states)
        neg = slice(-self.n_neg, None)
        q = torch.cat([qi, qt], 2)
        k = torch.cat([ki, kt, kt[:, :, neg]], 2)
        v = torch.cat([vi, vt, -self.scale * vt[:, :, neg]], 2)
        out = softmax_attention(q, k, v, self.mask(n_img))
        if self.cap is not None:
            plus = slice(0, kt.shape[2] - self.n_neg)
            text = (kt[:, :, plus], vt[:, :, plus]) if self.from_text else None
            out[:, :, :n_img] = naive_contrast(qi, torch.cat([ki, kt[:, :, plus]], 2), torch.cat([vi, vt[:, :, plus]], 2),
                                               kt[:, :, neg], vt[:, :, neg], self.scale, self.offset, self.cap,
                                               text=text)
        return finish(attn, out[:, :, :n_img], out[:, :, n_img:])


class ContrastOracle:
    """NAG/NASA as their reference code runs them: the joint attention once per prompt, then a per-token combine.

    The text stream is [P, N]; the positive branch sees only [I, P] and the negative branch only [I, N].
    `combine(z_pos, z_neg)` gets (tokens, channels) rows of one sample and is written as a plain loop by the test.
    """

    def __init__(self, n_pos, combine):
        self.n_pos, self.combine = n_pos, combine

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        n_img, p = hidden_states.shape[1], self.n_pos
        qi, ki, vi, qt, kt, vt = projections(attn, hidden_states, encoder_hidden_states)
        plus = softmax_attention(torch.cat([qi, qt[:, :, :p]], 2), torch.cat([ki, kt[:, :, :p]], 2),
                                 torch.cat([vi, vt[:, :, :p]], 2))
        minus = softmax_attention(torch.cat([qi, qt[:, :, p:]], 2), torch.cat([ki, kt[:, :, p:]], 2),
                                  torch.cat([vi, vt[:, :, p:]], 2))
        b, h, _, d = qi.shape

        def rows(x):  # (batch, heads, tokens, d) -> (batch, tokens, heads * d), NAG's layout
            return x.transpose(1, 2).reshape(b, -1, h * d)

        z_pos, z_neg = rows(plus[:, :, :n_img]), rows(minus[:, :, :n_img])
        image = torch.stack([self.combine(z_pos[i], z_neg[i]) for i in range(b)])
        image = image.reshape(b, n_img, h, d).transpose(1, 2)
        return finish(attn, image, torch.cat([plus[:, :, n_img:], minus[:, :, n_img:]], 2))


def run_with_oracle(pipe, processor, extra_tokens, **call):
    """Render with `processor` on every joint block and `extra_tokens` appended to the text stream; then restore."""
    def hook(module, args, kwargs):
        e = kwargs["encoder_hidden_states"]
        kwargs["encoder_hidden_states"] = torch.cat([e] + [t.to(e).expand(e.shape[0], -1, -1) for t in extra_tokens], 1)
        return args, kwargs

    original = dict(pipe.transformer.attn_processors)
    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    for block in pipe.transformer.transformer_blocks:
        block.attn.set_processor(processor)
    try:
        return generate(pipe, **call)
    finally:
        handle.remove()
        pipe.transformer.set_attn_processor(original)


def denoisers(pipe) -> list:
    """The pipeline's transformers: `transformer`, and Wan 2.2 A14B's low-noise expert `transformer_2`."""
    return [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]


def check_uncond_passes_run_plain(pipe, run) -> list:
    """Record every transformer call of `run()` (a CFG render inside `guidance.apply`); calls alternate cond, uncond.

    Afterwards, with guidance gone, each uncond call must equal the stock transformer (the expert that ran it) on
    the same inputs bit for bit, and each cond call must differ from it. Returns the transformer of each call.
    """
    calls = []

    def record(module, args, kwargs, output):
        calls.append((module, {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}, output[0].clone()))

    handles = [model.register_forward_hook(record, with_kwargs=True) for model in denoisers(pipe)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) >= 2 and len(calls) % 2 == 0
    for i, (model, kwargs, output) in enumerate(calls):
        plain = model(**kwargs)[0]
        assert torch.equal(output, plain) if i % 2 else not torch.allclose(output, plain, atol=1e-4)
    return [model for model, _, _ in calls]


def hooks_left(transformer) -> bool:
    """Whether guidance left any torch or diffusers hook, or a wrapped forward, on the transformer or its modules."""
    from vsf_cli.guidance.install import guided

    registry = getattr(transformer, "_diffusers_hook", None)
    return (bool(transformer._forward_pre_hooks) or bool(registry and registry.hooks)
            or any(guided(m) for m in transformer.modules()))


class DenseCross:
    """Wan cross-attention written out in full, in float64: the context's last `n_neg` tokens are the negative.

    method "vsf": one softmax over the whole context with a dense bias (-offset on negative columns) and the
    negative's values multiplied by -scale. "nag"/"nasa": one softmax per prompt, then NAG's formula token by token
    (`naive_nag`) or Z+ - s Z-.
    `image_tokens` > 0: that many image-context tokens lead the context (I2V) and are attended separately.
    """

    def __init__(self, n_neg, method="vsf", image_tokens=0, **params):
        self.n_neg, self.method, self.image_tokens, self.params = n_neg, method, image_tokens, params

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        b, h = hidden_states.shape[0], attn.heads

        def split(t):
            return t.view(b, t.shape[1], h, -1).transpose(1, 2).double()

        image_ctx = encoder_hidden_states[:, : self.image_tokens]
        text = encoder_hidden_states[:, self.image_tokens:]
        q = split(attn.norm_q(attn.to_q(hidden_states)))
        k, v = split(attn.norm_k(attn.to_k(text))), split(attn.to_v(text))
        n_pos = text.shape[1] - self.n_neg
        if self.method == "vsf":
            bias = torch.zeros(text.shape[1], dtype=torch.float64)
            bias[n_pos:] = -self.params["offset"]
            flip = torch.ones(text.shape[1], 1, dtype=torch.float64)
            flip[n_pos:] = -self.params["scale"]
            out = softmax_attention(q, k, v * flip, bias)
        else:
            z_pos = softmax_attention(q, k[:, :, :n_pos], v[:, :, :n_pos])
            z_neg = softmax_attention(q, k[:, :, n_pos:], v[:, :, n_pos:])
            if self.method == "nasa":
                out = z_pos - self.params["nasa_scale"] * z_neg
            else:
                combine = naive_nag(self.params["nag_scale"], self.params["nag_tau"], self.params["nag_alpha"])
                d = z_pos.shape[-1]

                def rows(x):  # (batch, heads, tokens, d) -> (batch, tokens, heads * d), NAG's layout
                    return x.transpose(1, 2).reshape(b, -1, h * d)

                out = torch.stack([combine(zp, zn) for zp, zn in zip(rows(z_pos), rows(z_neg), strict=True)])
                out = out.reshape(b, -1, h, d).transpose(1, 2)
        if self.image_tokens:
            k_img = split(attn.norm_added_k(attn.add_k_proj(image_ctx)))
            out = out + softmax_attention(q, k_img, split(attn.add_v_proj(image_ctx)))
        out = out.float().transpose(1, 2).reshape(b, -1, h * q.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))


def kernel_calls_per_step(pipe, monkeypatch, run) -> list[int]:
    """Run `run()` and return, per denoising step in order, how many times NAG's attention kernel ran.

    Steps are told apart by the transformers' `timestep` argument (a new value starts the next step; CFG's second
    forward of a step repeats it), seen by a torch pre-hook on each transformer: nothing is read from the
    scheduler. Its largest entry is the step's t also where timesteps are per token (Wan 2.2 TI2V gives a first
    frame t = 0).
    """
    from vsf_cli.guidance.nag import NAG

    counts: list[int] = []
    last = [None]

    def new_step(module, args, kwargs):
        t = float(kwargs["timestep"].max())
        if t != last[0]:
            counts.append(0)
            last[0] = t

    for name in ("kernel", "cross_kernel"):
        def counting(self, make=getattr(NAG, name)):
            inner = make(self)

            def kernel(*args, **kwargs):
                counts[-1] += 1
                return inner(*args, **kwargs)
            return kernel

        monkeypatch.setattr(NAG, name, counting)
    handles = [model.register_forward_pre_hook(new_step, with_kwargs=True) for model in denoisers(pipe)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return counts


def negative_states(pipe, text, length=None):
    """The negative as UMT5 states: unpadded (its own tokens and EOS), or zero-padded to `length` like a positive."""
    ids = pipe.tokenizer(text, return_tensors="pt")
    states = pipe.text_encoder(ids.input_ids, ids.attention_mask).last_hidden_state
    return states if length is None else torch.cat([states, states.new_zeros(1, length - states.shape[1], states.shape[2])], 1)


def unpadded_negative(pipe, text):
    """docs/method.md §2.1 written out with the pipeline's own tokenizers and encoders, sharing no code with vsf_cli:
    CLIP-L and CLIP-G penultimate states of BOS..EOS (no padding), joined on channels, zero-padded to the joint
    width, then the T5 tokens with EOS (no padding)."""
    clip = []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(text, return_tensors="pt").input_ids  # no padding unless asked for
        assert ids[0, 0] == tokenizer.bos_token_id and ids[0, -1] == tokenizer.eos_token_id
        clip.append(encoder(ids, output_hidden_states=True).hidden_states[-2])
    clip = torch.cat(clip, dim=-1)
    width = pipe.transformer.config.joint_attention_dim
    clip = torch.cat([clip, clip.new_zeros(1, clip.shape[1], width - clip.shape[2])], dim=-1)
    ids = pipe.tokenizer_3(text, return_tensors="pt").input_ids
    assert ids[0, -1] == pipe.tokenizer_3.eos_token_id
    return torch.cat([clip, pipe.text_encoder_3(ids).last_hidden_state], dim=1)


def oracle_run(pipe, negative, scale, offset, layout="paper", **call):
    """The dense oracle on `pipe`, sharing no code with vsf_cli: its own negative encoding and a dense mask."""
    neg = unpadded_negative(pipe, negative)
    processor = DenseVSF(77 + 256, neg.shape[1], scale, offset, layout)
    return run_with_oracle(pipe, processor, [neg] * (1 if layout == "paper" else 2), **call)
