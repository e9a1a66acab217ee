"""Normalized Attention Guidance (Chen et al. 2025, arXiv 2505.21179): extrapolate image attention away from Z-."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from vsf_cli.guidance.base import AttentionMethod

if TYPE_CHECKING:  # torch loads with the kernels, not with the parameters (the CLI reads them for its flags)
    import torch


def nag_combine(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float) -> torch.Tensor:
    """Z = a * clamp(s Z+ - (s-1) Z-) + (1-a) Z+; the clamp caps each token's L1 norm at tau times Z+'s.

    Tensors are (batch, heads, tokens, head_dim); the norm runs over all heads' channels of a token, as NAG
    computes it on the (batch, tokens, heads * head_dim) attention output.
    """
    import torch

    guided = scale * z_pos - (scale - 1) * z_neg
    norm_pos = z_pos.abs().sum(dim=(1, 3), keepdim=True)
    norm_guided = guided.abs().sum(dim=(1, 3), keepdim=True)
    ratio = norm_guided / norm_pos
    guided = guided * torch.minimum(ratio, torch.full_like(ratio, tau)) / ratio
    return alpha * guided + (1 - alpha) * z_pos


class NAG(AttentionMethod):
    """NAG as its authors ship it for SD3: a padded negative, image attention computed against each prompt."""

    nag_scale: float = Field(4.0, ge=1.0, le=20.0, description="extrapolation s; 1 = off")
    nag_tau: float = Field(2.5, ge=1.0, le=20.0, description="cap on the L1-norm ratio of guided to positive")
    nag_alpha: float = Field(0.125, ge=0.0, le=1.0, description="blend of the guided output into the positive one")
    nag_end: float = Field(1.0, ge=0.0, le=1.0, description="fraction of the denoising (by timestep) it is active")

    def kernel(self):
        from vsf_cli.guidance.attention import contrast_joint

        def kernel(image, positive, negative, negative_mask=None):
            z_pos, pos_out, z_neg, neg_out = contrast_joint(image, positive, negative, negative_mask=negative_mask)
            return nag_combine(z_pos, z_neg, self.nag_scale, self.nag_tau, self.nag_alpha), pos_out, neg_out

        return kernel

    def cross_kernel(self):
        from vsf_cli.guidance.attention import contrast_cross

        def kernel(query, positive, negative, negative_mask=None):
            z_pos, z_neg = contrast_cross(query, positive, negative, negative_mask=negative_mask)
            return nag_combine(z_pos, z_neg, self.nag_scale, self.nag_tau, self.nag_alpha)

        return kernel

    def options(self) -> dict:
        # NAG's pipelines stop guiding once t < (1 - nag_end) * 1000.
        def active(kwargs) -> bool:
            return float(kwargs["timestep"].flatten()[0]) >= (1 - self.nag_end) * 1000

        return {"padded": True, "active": active}
