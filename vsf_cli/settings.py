"""Resolved generation settings for one image: a validated pydantic model shared by CLI, metadata and batch."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Method = Literal["vsf", "none", "nag", "nasa", "cfg"]
Offload = Literal["none", "model", "sequential"]
Compat = Literal["paper", "reference"]


class GenSettings(BaseModel):
    """Everything needed to reproduce one image; written into the PNG and read back by `--from`."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    negative: str | None = None
    model: str = "sd35-large-turbo"
    method: Method = "vsf"
    # Method parameters are range-checked by the method itself (vsf_cli.guidance), not here;
    # they are None for methods that do not take them, so metadata never shows a knob that did nothing.
    scale: float | None = 3.5
    offset: float | None = 0.1
    compat: Compat | None = "paper"
    nag_scale: float | None = None
    nag_tau: float | None = None
    nag_alpha: float | None = None
    nag_end: float | None = None
    nasa_scale: float | None = None
    cfg_scale: float | None = None
    steps: int = Field(8, ge=1, le=200)
    width: int = Field(1024, ge=16, le=8192)
    height: int = Field(1024, ge=16, le=8192)
    seed: int | None = Field(None, ge=0, lt=2**63, description="None until the CLI picks a random seed")
    guidance_scale: float = Field(0.0, ge=0.0)
    max_sequence_length: int = Field(256, ge=1, le=512)
    lora: list[str] = []
    dtype: str = "auto"
    device: str = "auto"
    offload: Offload = "none"
