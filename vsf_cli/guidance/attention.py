"""Fast attention math per attention kind: SDPA with log-sum-exp, partition merges, and the VSF / contrast kernels."""

import torch
import torch.nn.functional as F

Group = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(query, key, value) of one token group, each (batch, heads, tokens, head_dim); query may be None."""


def join_masks(parts: list[tuple[torch.Tensor | None, int]], batch: int, device) -> torch.Tensor | None:
    """Key masks of consecutive key groups, (mask or None = keep all, group length), as one (batch, keys) mask;
    None when every part keeps all."""
    if all(mask is None for mask, _ in parts):
        return None
    return torch.cat([torch.ones(batch, n, dtype=torch.bool, device=device) if mask is None else mask
                      for mask, n in parts], dim=1)


def attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  key_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its log-sum-exp (float32), through a fused kernel where one exists.

    The log-sum-exp lets callers add more key groups afterwards (see `merge`), so the big image-token
    attention never needs a mask and stays on flash / memory-efficient kernels. `key_mask` (batch, keys), False
    for padding keys, runs each batch item over its own keys, still unmasked.
    """
    if key_mask is not None:
        parts = [attention_lse(q[b:b + 1], k[b:b + 1, :, key_mask[b]], v[b:b + 1, :, key_mask[b]])
                 for b in range(q.shape[0])]
        return torch.cat([out for out, _ in parts]), torch.cat([lse for _, lse in parts])
    if q.device.type == "cpu":
        _used("cpu flash")
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        return out, lse
    if q.device.type == "cuda":
        if q.dtype in (torch.float16, torch.bfloat16):
            try:
                out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
                _used("cuda flash")
                return out, lse
            except RuntimeError:  # head_dim or GPU generation the flash kernel does not support
                pass
        _used("cuda memory-efficient")
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
        return out, lse[..., : q.shape[2]]  # the kernel pads the lse length to a multiple of 32
    _used("math")
    return small_attention_lse(q, k, v)


def _used(kernel: str) -> None:
    """Record in `attention_lse.backend` the kernel an eager call used (the benchmark reports it); a compiled call
    records nothing, as setting a function attribute would break its graph."""
    if not torch.compiler.is_compiling():
        attention_lse.backend = kernel


def small_attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: float = 0.0,
    key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with explicit logits, for the few negative-prompt keys (n_N is ~4-80 tokens).

    `bias` is added to every logit; `key_mask` (batch, keys) is False for padding keys.
    """
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    lse = logits.logsumexp(dim=-1)
    out = torch.matmul(torch.softmax(logits, dim=-1), v.float())
    return out.to(v.dtype), lse


def merge(part_a: tuple[torch.Tensor, torch.Tensor], part_b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Softmax over the union of two key groups, from each group's output and log-sum-exp.

    softmax([A; B]) V = w Z_A + (1 - w) Z_B with w = sigmoid(lse_A - lse_B): exact, per head and query.
    """
    (out_a, lse_a), (out_b, lse_b) = part_a, part_b
    share_b = torch.sigmoid(lse_b - lse_a).unsqueeze(-1)  # 1 - w, the second group's share of the softmax mass
    return torch.lerp(out_a.float(), out_b.float(), share_b).to(out_a.dtype)


def with_flipped(
    attended: tuple[torch.Tensor, torch.Tensor],
    q: torch.Tensor,
    k_n: torch.Tensor,
    v_n: torch.Tensor,
    scale: float,
    offset: float,
    negative_mask: torch.Tensor | None,
    cap: float | None = None,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge the negative's keys, with values times -scale and logits minus offset, into an attention result.

    `attended` is (output, log-sum-exp) of the queries `q` over their other keys; an infinite offset leaves it as is.
    `cap` None is the paper's merge; a number is a contrast variant (`pushed_away`) with that cap, its push taken
    from `reference` (None: the attended output itself).
    """
    if offset == float("inf"):
        return attended[0]
    if cap is None:
        return merge(attended, small_attention_lse(q, k_n, v_n * -scale, bias=-offset, key_mask=negative_mask))
    negative = small_attention_lse(q, k_n, v_n, bias=-offset, key_mask=negative_mask)
    return pushed_away(attended, negative, scale, cap, reference)


def pushed_away(attended: tuple[torch.Tensor, torch.Tensor], negative: tuple[torch.Tensor, torch.Tensor],
                scale: float, cap: float, reference: torch.Tensor | None = None) -> torch.Tensor:
    """VSF's contrast variants (docs/method.md §1.4): Z = Z+ + scale * s * (R - Z-), where s is the share of the
    softmax the negative's keys would take beside the others (the paper's weight, offset included) and R is Z+
    (`contrast`) or the query's readout of the positive prompt's tokens alone (`text-contrast`, passed as
    `reference`). The push's L1 norm over all heads' channels is capped at `cap` times Z+'s, token by token, as
    NAG caps its guidance.

    The paper's merge is (1 - s) Z+ - scale * s * Z-: it dilutes the positive wherever a query reads the negative,
    and pushes along Z-'s part shared with every text, which is what moved objects and colours that a negative
    does not name (docs/toy.md).
    """
    (z_p, lse_p), (z_n, lse_n) = attended, negative
    share = torch.sigmoid(lse_n - lse_p).unsqueeze(-1)
    positive = z_p.float()
    push = scale * share * ((positive if reference is None else reference.float()) - z_n.float())
    if cap != float("inf"):
        ratio = push.abs().sum(dim=(1, 3), keepdim=True) / positive.abs().sum(dim=(1, 3), keepdim=True)
        push = push * torch.clamp(cap / ratio, max=1.0).nan_to_num(1.0)
    return (positive + push).to(z_p.dtype)


def vsf_cross(
    query: torch.Tensor,
    positive: tuple[torch.Tensor, torch.Tensor],
    negative: tuple[torch.Tensor, torch.Tensor],
    *,
    scale: float,
    offset: float,
    negative_mask: torch.Tensor | None = None,
    cap: float | None = None,
) -> torch.Tensor:
    """VSF in cross-attention (Wan `attn2`): one softmax over the context [positive + padding, negative] in which
    the negative's values are multiplied by -scale and its logits get -offset (docs/method.md §4).

    Every image query sees the same keys, so the offset is one broadcast bias row (batch, 1, 1, keys), never an
    n_image x keys mask. Measured against a log-sum-exp split, this single fused call is the faster (docs/benchmarks.md).
    `cap` a number: the contrast variant (`pushed_away`), from the positive's attention and the negative's apart.
    """
    (k_p, v_p), (k_n, v_n) = positive, negative
    if offset == float("inf"):
        return F.scaled_dot_product_attention(query, k_p, v_p)
    if cap is not None:
        return with_flipped(attention_lse(query, k_p, v_p), query, k_n, v_n, scale, offset, negative_mask, cap)
    bias = query.new_zeros(k_n.shape[0], 1, 1, k_p.shape[2] + k_n.shape[2])
    bias[..., k_p.shape[2]:] = -offset
    if negative_mask is not None:
        bias[..., k_p.shape[2]:] = bias[..., k_p.shape[2]:].masked_fill(~negative_mask[:, None, None, :], float("-inf"))
    keys, values = torch.cat([k_p, k_n], dim=2), torch.cat([v_p, v_n * -scale], dim=2)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=bias)


def contrast_cross(
    query: torch.Tensor,
    positive: tuple[torch.Tensor, torch.Tensor],
    negative: tuple[torch.Tensor, torch.Tensor],
    *,
    negative_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention against each prompt separately, (Z+, Z-), as NAG runs it on Wan."""
    mask = None if negative_mask is None else negative_mask[:, None, None, :]
    return F.scaled_dot_product_attention(query, *positive), F.scaled_dot_product_attention(query, *negative, attn_mask=mask)


def vsf_joint(
    image: Group,
    positive: Group,
    negative: Group,
    *,
    scale: float,
    offset: float,
    negative_mask: torch.Tensor | None = None,
    context_mask: torch.Tensor | None = None,
    cap: float | None = None,
    from_text: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VSF in one joint (MMDiT) attention layer; returns the outputs of the image, positive and negative queries.

    Visibility (paper Fig. 3; docs/method.md §2.2), with the flipped copy N1 = (K_N0, -scale * V_N0):
      image queries     -> image, positive, N1 (logits - offset)
      positive queries  -> image, positive
      negative queries  -> image, negative (the collector N0)
    Image and positive queries share one fused attention over [image, positive]. The key masks (batch, keys), False
    for padding, cover the negative and [image, positive] (`context_mask`: a batch of captions of unequal length).
    `cap` None is the paper's merge for the image queries; a number, a contrast variant with that cap, pushing from
    the image queries' whole output or, with `from_text`, from their readout of the positive's tokens alone.
    """
    q_i, k_i, v_i = image
    q_p, k_p, v_p = positive
    q_n, k_n, v_n = negative
    n_i = q_i.shape[2]
    out, lse = attention_lse(torch.cat([q_i, q_p], dim=2), torch.cat([k_i, k_p], dim=2), torch.cat([v_i, v_p], dim=2),
                             key_mask=context_mask)
    reference = None
    if from_text and cap is not None and offset != float("inf"):
        text_mask = None if context_mask is None else context_mask[:, n_i:]
        reference = attention_lse(q_i, k_p, v_p, key_mask=text_mask)[0]
    image_out = with_flipped((out[:, :, :n_i], lse[:, :, :n_i]), q_i, k_n, v_n, scale, offset, negative_mask, cap,
                             reference)
    image_mask = None if context_mask is None else context_mask[:, :n_i]
    collector = merge(attention_lse(q_n, k_i, v_i, key_mask=image_mask),
                      small_attention_lse(q_n, k_n, v_n, key_mask=negative_mask))
    return image_out, out[:, :, n_i:], collector


def contrast_joint(
    image: Group,
    positive: Group,
    negative: Group,
    *,
    negative_mask: torch.Tensor | None = None,
    context_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joint attention run once with the positive and once with the negative as the text, as NAG and NASA do.

    Returns (Z+ image, positive out, Z- image, negative out): image and positive queries see [image, positive];
    image and negative queries see [image, negative]. The text stream thus carries both prompts, each refined
    against the image only, which is NAG's batch-of-two layout without doubling the image tokens' projections.
    Key masks as in `vsf_joint`.
    """
    q_i, k_i, v_i = image
    q_p, k_p, v_p = positive
    q_n, k_n, v_n = negative
    n_i, batch = q_i.shape[2], q_i.shape[0]

    def keys(second: torch.Tensor | None, n_second: int) -> torch.Tensor | None:  # [image, second] for SDPA
        mask = join_masks([(image_mask, n_i), (second, n_second)], batch, q_i.device)
        return None if mask is None else mask[:, None, None, :]

    image_mask, positive_mask = (None, None) if context_mask is None else (context_mask[:, :n_i], context_mask[:, n_i:])
    plus = F.scaled_dot_product_attention(torch.cat([q_i, q_p], 2), torch.cat([k_i, k_p], 2), torch.cat([v_i, v_p], 2),
                                          attn_mask=keys(positive_mask, k_p.shape[2]))
    minus = F.scaled_dot_product_attention(torch.cat([q_i, q_n], 2), torch.cat([k_i, k_n], 2), torch.cat([v_i, v_n], 2),
                                           attn_mask=keys(negative_mask, k_n.shape[2]))
    return plus[:, :, :n_i], plus[:, :, n_i:], minus[:, :, :n_i], minus[:, :, n_i:]
