"""No guidance: the positive prompt only; the baseline every method is compared against."""

from typing import ClassVar

from vsf_cli.guidance.base import Method


class NoGuidance(Method):
    """Leaves the pipeline untouched; any negative prompt is ignored."""

    needs_negative: ClassVar[bool] = False

    def install(self, pipe, negatives: list[str], max_sequence_length: int | None = None):
        from vsf_cli.guidance.install import Installation

        return Installation()
