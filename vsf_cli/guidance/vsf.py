"""Value Sign Flip: image queries read the negative's keys with values multiplied by -scale (arXiv 2508.10931)."""

from typing import Literal

from pydantic import Field

from vsf_cli.guidance.base import AttentionMethod

# The contrast variant's cap on its push, in units of the positive attention output's L1 norm, token by token;
# chosen on the toy's dev prompts (docs/toy.md, "Collateral").
CAP = 0.5


class VSF(AttentionMethod):
    """VSF with the paper's layout (collector N0 in the stream, flipped K/V-only copy N1 read by image tokens)."""

    scale: float = Field(3.5, ge=0.0, le=20.0, description="flip scale alpha: the negative's values are multiplied by "
                         "-scale; higher pushes harder away from the negative")
    offset: float = Field(0.1, ge=-5.0, description="logit offset beta subtracted from image->negative logits; higher "
                          "damps the negative, inf = off")
    variant: Literal["paper", "contrast", "text-contrast"] = Field(
        "paper", description="paper (the paper's sign flip); contrast (push away from the negative relative to the "
        "positive attention output, capped: keeps objects a negative does not name, adds suns on the toy); "
        "text-contrast (the same push, relative to what a patch reads from the prompt's tokens alone; docs/toy.md)")
    compat: Literal["paper", "reference"] = Field(
        "paper", description="stream layout: paper (the paper's design) or reference (the seed code's, with the negative "
        "twice, which the paper's numbers used)"
    )

    def _cap(self) -> float | None:
        return None if self.variant == "paper" else CAP

    def kernel(self):
        from functools import partial

        from vsf_cli.guidance.attention import vsf_joint

        return partial(vsf_joint, scale=self.scale, offset=self.offset, cap=self._cap(),
                       from_text=self.variant == "text-contrast")

    def cross_kernel(self):
        """In cross-attention the positive output is already the prompt's readout: both contrast variants agree."""
        from functools import partial

        from vsf_cli.guidance.attention import vsf_cross

        return partial(vsf_cross, scale=self.scale, offset=self.offset, cap=self._cap())

    def options(self) -> dict:
        return {"reference_layout": self.compat == "reference"}
