"""Dense-mask VSF: slow, obviously correct; the test oracle (float64) and the benchmark's seed-code baseline."""

import torch
import torch.nn.functional as F

from vsf_cli.guidance.attention import Group


def vsf_mask(n_i: int, n_p: int, n_n: int, offset: float, negative_mask: torch.Tensor | None = None,
             batch: int = 1) -> torch.Tensor:
    """The additive mask of the paper's table: queries [I, P, N0], keys [I, P, N0, N1]; (batch, 1, q, k) float64."""
    I, P, N0, N1 = slice(0, n_i), slice(n_i, n_i + n_p), slice(n_i + n_p, n_i + n_p + n_n), slice(n_i + n_p + n_n, None)
    mask = torch.full((batch, 1, n_i + n_p + n_n, n_i + n_p + 2 * n_n), float("-inf"), dtype=torch.float64)
    rows_i, rows_p, rows_n = I, P, slice(n_i + n_p, None)
    mask[:, :, rows_i, I] = 0
    mask[:, :, rows_i, P] = 0
    mask[:, :, rows_i, N1] = -offset
    mask[:, :, rows_p, I] = 0
    mask[:, :, rows_p, P] = 0
    mask[:, :, rows_n, I] = 0
    mask[:, :, rows_n, N0] = 0
    if negative_mask is not None:
        pad = ~negative_mask.cpu()[:, None, None, :]
        mask[:, :, :, N0] = mask[:, :, :, N0].masked_fill(pad, float("-inf"))
        mask[:, :, :, N1] = mask[:, :, :, N1].masked_fill(pad, float("-inf"))
    return mask


def vsf_joint_dense(
    image: Group,
    positive: Group,
    negative: Group,
    *,
    scale: float,
    offset: float,
    negative_mask: torch.Tensor | None = None,
    exact: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VSF joint attention as the paper draws it: keys [I, P, N0, N1] and one dense additive mask.

    `exact` computes in float64 (the tests' oracle); otherwise one SDPA call with the mask in the working dtype,
    which is what the seed code does (and what keeps it off the flash kernels).
    """
    (q_i, k_i, v_i), (q_p, k_p, v_p), (q_n, k_n, v_n) = image, positive, negative
    n_i, n_p, n_n = q_i.shape[2], q_p.shape[2], q_n.shape[2]
    q = torch.cat([q_i, q_p, q_n], dim=2)
    k = torch.cat([k_i, k_p, k_n, k_n], dim=2)
    v = torch.cat([v_i, v_p, v_n, -scale * v_n], dim=2)
    mask = vsf_mask(n_i, n_p, n_n, offset, negative_mask, batch=q.shape[0]).to(q.device)
    if exact:
        logits = q.double() @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5 + mask
        out = (torch.softmax(logits, dim=-1) @ v.double()).to(q_i.dtype)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
    return out[:, :, :n_i], out[:, :, n_i:n_i + n_p], out[:, :, n_i + n_p:]
