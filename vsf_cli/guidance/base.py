"""The method interface: validated parameters, an `install` that returns something with `remove()`, call kwargs."""

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Method(BaseModel):
    """A guidance method's parameters, range-checked on construction; `install` patches a loaded pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    needs_negative: ClassVar[bool] = True
    cost: ClassVar[str] = ""  # per-step cost in extra passes, for docs and `--help`

    def install(self, pipe, negatives: list[str]):
        raise NotImplementedError

    def call_kwargs(self, pipe, negatives: list[str]) -> dict:
        """Extra pipeline-call arguments the method needs (only CFG uses the pipeline's own machinery)."""
        return {}
