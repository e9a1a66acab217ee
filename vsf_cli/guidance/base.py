"""The method interface: validated parameters, an `install` that returns something with `remove()`, call kwargs."""

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Method(BaseModel):
    """A guidance method's parameters, range-checked on construction; `install` patches a loaded pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    needs_negative: ClassVar[bool] = True

    def install(self, pipe, negatives: list[str]):
        raise NotImplementedError

    def call_kwargs(self, pipe, negatives: list[str]) -> dict:
        """Extra pipeline-call arguments the method needs (only CFG uses the pipeline's own machinery)."""
        return {}


class JointMethod(Method):
    """A method that runs in joint attention: a kernel over (image, positive, negative) groups plus layout options."""

    def kernel(self):
        """The attention kernel, `kernel(image, positive, negative, negative_mask=None) -> three outputs`."""
        raise NotImplementedError

    def joint_options(self) -> dict:
        """Keyword arguments for `install_joint` (negative padding, stream layout, per-call activity)."""
        return {}

    def install(self, pipe, negatives: list[str]):
        from vsf_cli.guidance.joint import install_joint
        from vsf_cli.models.families import adapter_for

        return install_joint(pipe, adapter_for(pipe), negatives, self.kernel(), **self.joint_options())
