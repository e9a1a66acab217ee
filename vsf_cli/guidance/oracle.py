"""Dense-mask reference implementations: slow, obviously correct, used by the tests and the benchmark."""

import torch

from vsf_cli.guidance.attention import Group


def vsf_joint_dense(
    image: Group,
    positive: Group,
    negative: Group,
    *,
    scale: float,
    offset: float,
    negative_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VSF joint attention written as the paper draws it: keys [I, P, N0, N1] and one dense additive mask."""
    (q_i, k_i, v_i), (q_p, k_p, v_p), (q_n, k_n, v_n) = image, positive, negative
    n_i, n_p, n_n = q_i.shape[2], q_p.shape[2], q_n.shape[2]
    q = torch.cat([q_i, q_p, q_n], dim=2).double()
    k = torch.cat([k_i, k_p, k_n, k_n], dim=2).double()
    v = torch.cat([v_i, v_p, v_n, -scale * v_n], dim=2).double()

    I, P, N0, N1 = (slice(0, n_i), slice(n_i, n_i + n_p), slice(n_i + n_p, n_i + n_p + n_n), slice(n_i + n_p + n_n, None))
    rows = {"I": slice(0, n_i), "P": slice(n_i, n_i + n_p), "N": slice(n_i + n_p, None)}
    neg_inf = float("-inf")
    mask = torch.full((q.shape[0], 1, q.shape[2], k.shape[2]), neg_inf, dtype=torch.float64)
    mask[:, :, rows["I"], I] = 0
    mask[:, :, rows["I"], P] = 0
    mask[:, :, rows["I"], N1] = -offset
    mask[:, :, rows["P"], I] = 0
    mask[:, :, rows["P"], P] = 0
    mask[:, :, rows["N"], I] = 0
    mask[:, :, rows["N"], N0] = 0
    if negative_mask is not None:
        pad = ~negative_mask[:, None, None, :]
        mask[:, :, :, N0] = mask[:, :, :, N0].masked_fill(pad, neg_inf)
        mask[:, :, :, N1] = mask[:, :, :, N1].masked_fill(pad, neg_inf)

    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + mask
    out = (torch.softmax(logits, dim=-1) @ v).to(q_i.dtype)
    return out[:, :, rows["I"]], out[:, :, rows["P"]], out[:, :, rows["N"]]
