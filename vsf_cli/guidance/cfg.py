"""Classifier-free guidance through the stock pipeline's own `negative_prompt` (two passes per step)."""

from pydantic import Field

from vsf_cli.errors import UsageError
from vsf_cli.guidance.base import Method


class CFG(Method):
    """The pipeline's CFG with the negative as its unconditional prompt; meant for non-distilled models."""

    cfg_scale: float = Field(4.5, gt=1.0, le=30.0, description="guidance scale w; two passes per step")

    def install(self, pipe, negatives: list[str], max_sequence_length: int | None = None):
        from vsf_cli.guidance.install import Installation
        from vsf_cli.models import families

        refused = families.of(pipe).cfg_refused
        if refused:
            raise UsageError(refused)
        return Installation()  # nothing to patch: the pipeline does CFG itself

    def call_kwargs(self, pipe, negatives: list[str]) -> dict:
        from vsf_cli.models import families
        from vsf_cli.negatives import label

        family = families.of(pipe)
        # Several negatives for one prompt are one unconditional prompt to CFG: joined as a user would write them.
        texts = [label(n) for n in negatives]
        negative = texts[0] if len(texts) == 1 else texts
        return {"negative_prompt": negative, family.cfg_argument: self.pipeline_scale(family)}

    def pipeline_scale(self, family) -> float:
        """The pipeline argument for w: w itself, or w - 1 where the pipeline's 0 means off (Z-Image)."""
        return self.cfg_scale - 1 + family.cfg_off_at
