"""The method interface: validated parameters, an `install` that returns something with `remove()`, call kwargs."""

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Method(BaseModel):
    """A guidance method's parameters, range-checked on construction; `install` patches a loaded pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    needs_negative: ClassVar[bool] = True

    def install(self, pipe, negatives: list[str], max_sequence_length: int | None = None):
        raise NotImplementedError

    def call_kwargs(self, pipe, negatives: list[str]) -> dict:
        """Extra pipeline-call arguments the method needs (only CFG uses the pipeline's own machinery)."""
        return {}


class AttentionMethod(Method):
    """A method that runs inside attention: a kernel per attention kind plus layout options.

    Joint attention (SD3, Flux, Z-Image) and cross-attention (Wan) get different kernels; the family says which.
    """

    def kernel(self):
        """The joint-attention kernel, `kernel(image, positive, negative, negative_mask=None, context_mask=None)`
        -> outputs of the image, positive and negative queries."""
        raise NotImplementedError

    def cross_kernel(self):
        """The cross-attention kernel, `kernel(query, positive, negative, negative_mask=None) -> output`."""
        raise NotImplementedError

    def options(self) -> dict:
        """Keyword arguments for the install (negative padding, stream layout, per-call activity)."""
        return {}

    def install(self, pipe, negatives: list[str], max_sequence_length: int | None = None):
        import dataclasses
        from functools import partial

        from vsf_cli.models import families

        family = families.of(pipe)
        # The call's text length reaches the family's negative encoder, which cuts the negative there.
        family = dataclasses.replace(
            family, encode_negative=partial(family.encode_negative, max_sequence_length=max_sequence_length))
        return self.install_family(pipe, family, negatives)

    def install_family(self, pipe, family, negatives: list[str]):
        """Install on `pipe` laid out as `family` says (the benchmark passes one with random negative tokens)."""
        if family.attention == "cross":
            from vsf_cli.guidance.cross import install_cross

            return install_cross(pipe, family, negatives, self.cross_kernel(), **self.options())
        from vsf_cli.guidance.joint import install_joint

        return install_joint(pipe, family, negatives, self.kernel(), **self.options())
