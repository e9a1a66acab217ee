"""Model families as data: the `Family` record every family file fills in, and lookups by name, pipeline or hub id.

Family files hold facts about a model family and the few functions only it can supply (how a negative prompt is
encoded, how text positions extend); they hold no attention math and no copy of a diffusers processor. Importing
them imports neither torch nor diffusers, so settings can be checked before anything heavy loads.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from vsf_cli.errors import UsageError

NAMES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)))  # one file per family in this folder


def _unchanged(kwargs: dict, added: int) -> dict:
    return kwargs


def _no_check(pipe) -> None:
    return None


def _same_rotary(output, n_positive: int):
    return output


def refuse_cfg(pipe) -> None:
    """A `check_call` for pipelines that batch CFG's two passes into one forward: guidance replaces CFG there."""
    if getattr(pipe, "do_classifier_free_guidance", False):
        off = of(pipe).cfg_off_at
        raise UsageError(
            f"guidance runs with the pipeline's CFG off, guidance_scale <= {off:g} (got {pipe.guidance_scale}); "
            f"use guidance_scale={off:g} for few-step models, or method 'cfg' for classifier-free guidance"
        )


@dataclass(frozen=True)
class Carrier:
    """How the negative travels in a family whose denoiser call cannot take extra text tokens.

    Z-Image pads and positions the caption inside its forward, so appending to the call's caption would move the
    positive's padding and the image's rotary positions. There the negative is prepared on its own (`prepare`), then
    carried beside the sequence through the `blocks`: each block sees [sequence, negative] and hands the sequence
    back unchanged in shape, so the model's own code never sees the extra tokens.
    """

    blocks: Callable[[Any], list[Any]]  # denoiser -> the blocks whose attention holds the negative
    hidden: str  # block argument names: the token states (batch, tokens, dim),
    mask: str  # the key mask (batch, tokens) bool or None,
    rotary: str  # and the rotary table (batch, tokens, ...)
    positive_tokens: Callable[[dict], int]  # denoiser call kwargs -> tokens of the positive text in the sequence
    # (denoiser, tokens (batch, n, width), key mask or None, padded) -> (hidden, rotary, key mask or None)
    prepare: Callable[..., tuple[Any, Any, Any]]


@dataclass(frozen=True)
class Family:
    """Everything vsf needs to know about one model family.

    Token layout: `attention` is "joint" (text and image tokens in one attention sequence; `text_first` says which
    comes first) or "cross" (image queries read a text context). `attentions(denoiser)` lists the attention modules
    to guide; their own processors run, and guidance replaces only the attention call inside them.
    """

    name: str
    label: str  # how messages name it: "Wan"
    pipelines: dict[str, str]  # task -> diffusers pipeline class: text, img2img, inpaint, img2video
    default_model: str  # the registry entry whose numbers a folder or hub id of this family starts from
    hub_names: tuple[str, ...]  # lower-case pieces of hub ids that belong to the family
    attention: Literal["joint", "cross"]
    attentions: Callable[[Any], list[Any]]
    encode_negative: Callable[..., Any]  # (pipe, text, padded, max_sequence_length) -> (1, tokens, width) text tokens
    text_first: bool = False
    text_kwarg: str = "encoder_hidden_states"  # the denoiser argument that carries the text tokens
    image_context_kwarg: str | None = None  # cross: image tokens the attention splits off at a fixed text length
    denoisers: tuple[str, ...] = ("transformer",)  # pipeline attributes that run the denoising
    experts: tuple[str, ...] = ()  # one name per denoiser, what `--lora NAME=FILE` targets (Wan 2.2: high, low)
    extend_kwargs: Callable[[dict, int], dict] = _unchanged  # give `added` text tokens their positions
    carrier: Carrier | None = None  # joint: carry the negative beside the blocks instead of in the call's text
    # joint, for a forward that makes the text rotary from the text's length (Qwen-Image): denoiser -> the module
    # that makes it, and (its output, positive tokens) -> the output with the appended tokens' rows placed
    text_rotary: Callable[[Any], Any] | None = None
    place_text_rotary: Callable[[Any, int], Any] = _same_rotary
    check_call: Callable[[Any], None] = _no_check  # refuse a pipeline state guidance cannot handle
    cfg_argument: str | None = "guidance_scale"  # the pipeline argument that is classifier-free guidance; None: none
    cfg_separate_pass: bool = True  # CFG's unconditional pass is its own forward (False: batched with the other)
    # The CFG argument's value that turns CFG off. At 1 it is the usual w (SD3); Z-Image computes
    # cond + g (cond - uncond), so its g is w - 1 and 0 is off. Method 'cfg' passes w - 1 + cfg_off_at.
    cfg_off_at: float = 1.0
    cfg_refused: str = ""  # why method 'cfg' cannot run on the family's pipelines; "" when it can
    # The denoiser config flag saying guidance_scale feeds a distilled guidance embedding; without it the pipeline
    # is not given guidance_scale. None: always given.
    guidance_embedding: str | None = None
    video: bool = False
    frame_step: int | None = None  # video: frame counts are 1 + k * frame_step
    size_multiple: int = 16  # VAE factor x patch size
    vae_dtype: str | None = None  # the VAE runs in this dtype whatever the pipeline's
    inpaint_channels: tuple[int, ...] = ()  # transformer input channels the inpainting pipeline accepts; () = any
    img2img_strength: bool = True  # img2img repaints a noised copy by `strength`; False: it conditions on the image
    tasks_loaded: tuple[str, ...] = ("text",)  # tasks loaded from disk; the others are built from a loaded pipeline
    needs: tuple[tuple[str, str], ...] = ()  # (task, module) pairs: modules a task's pipeline needs beyond vsf's own

    def refuse_reference_layout(self) -> None:
        """compat=reference, the seed code's SD3 stream [P, Na, Nb], needs the text carried in the call at the
        positions the call gives; a family that carries the negative or re-places its text rotary refuses it."""
        if self.carrier is not None or self.text_rotary is not None:
            raise UsageError(f"compat=reference is the seed code's SD3 layout; {self.label} has only compat=paper")

    def pipeline_class(self, task: str):
        """The diffusers class for a task (imports diffusers)."""
        import diffusers

        return getattr(diffusers, self.pipelines[task])


@functools.cache
def get(name: str) -> Family:
    """The family called `name`."""
    if name not in NAMES:
        raise UsageError(f"model family {name!r} is not supported yet; supported: {', '.join(NAMES)}")
    return importlib.import_module(f"vsf_cli.models.families.{name}").FAMILY


def every() -> list[Family]:
    return [get(name) for name in NAMES]


def by_pipeline_class(class_name: str) -> tuple[Family, str] | None:
    """(family, task) of a diffusers pipeline class name, or None."""
    for family in every():
        for task, name in family.pipelines.items():
            if name == class_name:
                return family, task
    return None


def by_hub_id(hub_id: str) -> Family | None:
    """The family with the longest name piece in the hub id: "flux.2-klein" over "flux.2", and that over "flux"."""
    lowered = hub_id.lower()
    found = [(len(piece), f.name) for f in every() for piece in f.hub_names if piece in lowered]
    return get(max(found)[1]) if found else None


def of(pipe) -> Family:
    """The family of a loaded diffusers pipeline, from its class."""
    found = by_pipeline_class(type(pipe).__name__)
    if found is None:
        supported = ", ".join(name for f in every() for name in f.pipelines.values())
        raise UsageError(f"{type(pipe).__name__} is not supported yet; supported: {supported}")
    return found[0]
