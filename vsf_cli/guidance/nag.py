"""Normalized Attention Guidance (Chen et al. 2025, arXiv 2505.21179): extrapolate image attention away from Z-."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from vsf_cli.errors import UsageError
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
    nag_end: float = Field(1.0, ge=0.0, le=1.0,
                           description="fraction of the steps it guides, from the first: 0.5 = the first half")

    def kernel(self):
        from vsf_cli.guidance.attention import contrast_joint

        def kernel(image, positive, negative, **masks):
            z_pos, pos_out, z_neg, neg_out = contrast_joint(image, positive, negative, **masks)
            return nag_combine(z_pos, z_neg, self.nag_scale, self.nag_tau, self.nag_alpha), pos_out, neg_out

        return kernel

    def cross_kernel(self):
        from vsf_cli.guidance.attention import contrast_cross

        def kernel(query, positive, negative, negative_mask=None):
            z_pos, z_neg = contrast_cross(query, positive, negative, negative_mask=negative_mask)
            return nag_combine(z_pos, z_neg, self.nag_scale, self.nag_tau, self.nag_alpha)

        return kernel

    def options(self) -> dict:
        # A window by steps, not by timestep (NAG's pipelines stop once t < (1 - nag_end) * 1000, which reads Flux's
        # t / 1000 as "always off"): step i of n is guided while i / n < nag_end, so nag_end 0.5 guides 4 of 8 steps,
        # 0.3 guides 3 of 8 (each step that starts before 30% of the run), 0 none and 1 all, on every family.
        def active(pipe, kwargs) -> bool:
            if self.nag_end >= 1:
                return True
            step, steps = step_of_run(pipe)
            return step / steps < self.nag_end

        return {"padded": True, "active": active}


def step_of_run(pipe) -> tuple[int, int]:
    """(i, n): the transformer call now running belongs to step i (from 0) of the n steps this pipeline call runs.

    Read from the pipeline's scheduler, not from the `timestep` argument: families scale it differently (Flux passes
    t / 1000, SD3 and Wan t), and a window by timestep is a window by the noise schedule, not by steps. diffusers'
    FlowMatchEulerDiscreteScheduler and UniPCMultistepScheduler reset `step_index` to None in `set_timesteps`,
    set it on the first `step()` and add one per `step()`, so every forward of one step (CFG's second pass, SD3's
    skip-layer pass) sees the same index. img2img and inpaint start at `begin_index` (`t_start * order`); i counts
    from there and n is the steps actually run, so `--strength 0.5 --steps 8 --nag-end 0.5` guides 2 of the 4
    steps that run: the window is a share of the work the user sees happen, as with text-to-image.
    """
    scheduler = pipe.scheduler
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None or not hasattr(scheduler, "step_index"):
        raise UsageError(f"nag_end < 1 needs a scheduler that counts its steps; {type(scheduler).__name__} does not")
    first = getattr(scheduler, "begin_index", None) or 0
    index = scheduler.step_index  # None until the first step() of this pipeline call
    return (0 if index is None else index - first), len(timesteps) - first
