"""The method interface: validated parameters plus an `install` that returns something with `remove()`."""

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Method(BaseModel):
    """A guidance method's parameters, range-checked on construction; `install` patches a loaded pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    needs_negative: ClassVar[bool] = True

    def install(self, pipe, negatives: list[str]):
        raise NotImplementedError
