"""Generation settings: the validated model for one image, and how layers of them merge (no model load)."""

import os
from collections.abc import Callable
from copy import copy
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from vsf_cli import negatives
from vsf_cli.errors import UsageError
from vsf_cli.guidance import METHODS, knobs
from vsf_cli.models import families

Method = Literal[tuple(METHODS)]
Offload = Literal["none", "model", "sequential"]

SEED_MAX = 2**63 - 1  # what torch.Generator.manual_seed takes and `--from` replays; every seed source is checked
GUIDANCE_MAX = 30.0  # the pipeline's guidance_scale; far beyond any model's useful range, and finite
# Method parameters that GenSettings carries, declared once each by the method that takes it (vsf_cli.guidance).
METHOD_SETTINGS = tuple(knobs())
# Settings a `VSF_<NAME>` environment variable may set (precedence: above files and jobs, below flags).
ENV_SETTINGS = ("model", "method", "scale", "offset", "compat", "steps", "guidance_scale", "dtype", "device", "offload",
                "quantize", "compile")
MODEL_DEFAULTS = ("steps", "width", "height", "scale", "offset", "guidance_scale", "max_sequence_length",
                  "frames", "fps", "trim_start")
VIDEO_SETTINGS = ("frames", "fps", "trim_start", "vae_tiling")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    negative: str | list[str] | None = None  # several: each encoded on its own, all removed
    model: str = "sd35-large-turbo"
    method: Method = "vsf"


# The method parameters are their methods' own fields (type, default, range, description), made optional: resolve()
# sets those the chosen method does not take to None, so metadata never shows a knob that did nothing.
_Guided = create_model("_Guided", __base__=_Request, **{
    name: (knob.field.annotation | None, copy(knob.field)) for name, knob in knobs().items()})


class GenSettings(_Guided):
    """Everything needed to reproduce one image; written into the PNG and read back by `--from`."""

    steps: int = Field(8, ge=1, le=200, description="denoising steps")
    width: int = Field(1024, ge=16, le=8192)
    height: int = Field(1024, ge=16, le=8192)
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="None until the CLI picks a random seed")
    guidance_scale: float = Field(0.0, ge=0.0, le=GUIDANCE_MAX, description=(
        "the pipeline's guidance_scale: CFG on SD3 and Wan (on SD3 vsf, nag and nasa need <= 1; on Wan > 1 adds an "
        "unguided pass per step, and guidance steers the conditional one), Flux and FLUX.2 dev's distilled guidance"))
    max_sequence_length: int = Field(256, ge=1, le=512)
    image: str | None = Field(None, description="input image for image-to-image or inpainting")
    image_sha256: str | None = None
    mask: str | None = Field(None, description="inpainting mask: white is repainted, black is kept")
    mask_sha256: str | None = None
    strength: float | None = Field(None, ge=0.0, le=1.0, description="how much of the input is repainted")
    lora: list[str] = []
    default_lora: bool | None = Field(None, description="load the model's own LoRA (None: it has none)")
    # Video only (None for images): frames made (4k+1), playback rate, frames dropped from the start, VAE tiling.
    frames: int | None = Field(None, ge=1, le=1001)
    fps: int | None = Field(None, ge=1, le=240)
    trim_start: int | None = Field(None, ge=0)
    vae_tiling: bool | None = None
    dtype: str = "auto"
    device: str = "auto"
    offload: Offload = "none"
    quantize: str = "none"  # a name in vsf_cli.models.quantize.CHOICES, or a .gguf transformer file
    compile: bool = False


FIELDS = tuple(GenSettings.model_fields)


def env_layer() -> dict:
    """Settings from `VSF_*` environment variables."""
    return {key: os.environ[f"VSF_{key.upper()}"] for key in ENV_SETTINGS if os.environ.get(f"VSF_{key.upper()}")}


def resolve(*layers: dict, warn: Callable[[str], None] = lambda message: None, video: bool | None = None) -> dict:
    """Merge layers (lowest first) over the model's defaults, validate, and fill in the method's parameters.

    None values in a layer mean "not set". `video` says what the command makes (None: either), checked first.
    The result also names the model's `family`.
    """
    from vsf_cli import guidance
    from vsf_cli.models import limits
    from vsf_cli.models.loading import check_lora
    from vsf_cli.models.registry import DEFAULT_MODEL
    from vsf_cli.models.registry import resolve as resolve_model

    merged: dict = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    spec = resolve_model(str(merged.get("model") or DEFAULT_MODEL))
    family = families.get(spec.family)
    if video is not None and video != family.video:
        from vsf_cli.models.registry import MODELS

        if not video:
            raise UsageError(f"{merged.get('model') or spec.alias} makes videos; use `vsf video`")
        known = ", ".join(alias for alias, m in MODELS.items() if families.get(m.family).video)
        raise UsageError(f"{merged.get('model') or spec.alias} makes images; use `vsf gen` (video models: {known})")
    if merged.get("image") or merged.get("mask"):
        merged.update(_image_inputs(merged, warn, spec, family))
    elif merged.get("strength") is not None:
        raise UsageError("--strength needs --image")
    elif spec.task == "img2video":
        raise UsageError(f"{spec.alias} makes video from an image: pass --image PATH (its first frame)")
    elif spec.task == "edit":
        raise UsageError(f"{spec.alias} edits an image: pass --image PATH")
    merged = {**{k: getattr(spec, k) for k in MODEL_DEFAULTS}, **merged, "model": str(merged.get("model") or spec.alias)}
    if spec.loras:  # the model's distill LoRA comes first unless switched off; naming it again adds nothing
        merged["default_lora"] = merged.get("default_lora", True)
        own = list(merged.get("lora") or [])
        merged["lora"] = [*(x for x in spec.loras if merged["default_lora"] and x not in own), *own]
    elif merged.get("default_lora") is not None:
        merged.pop("default_lora")  # nothing to switch off
    merged["negative"] = negatives.normalise(merged.get("negative"))
    merged.setdefault("method", "vsf" if merged.get("negative") else "none")
    if not merged.get("prompt"):
        raise UsageError("missing prompt")
    if any(not isinstance(n, str) or not n.strip() for n in negatives.texts(merged["negative"])):
        raise UsageError("a negative prompt is empty (only white space); give one, or leave --neg out")
    if merged["method"] != "none" and not merged.get("negative"):
        raise UsageError(f"method {merged['method']} needs a negative prompt (--neg TEXT)")
    try:
        settings = GenSettings(**merged).model_dump()
    except ValidationError as e:
        raise UsageError("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None
    multiple = spec.size_multiple or family.size_multiple
    for side in ("width", "height"):
        if settings[side] % multiple:
            raise UsageError(f"size: {side} {settings[side]} is not a multiple of {multiple}")
    _check_video(settings, family, spec, warn)
    for source in settings["lora"]:
        check_lora(source, family)
    if settings["quantize"] != "none":
        from vsf_cli.models.loading import resolve_device
        from vsf_cli.models.quantize import check as check_quantize

        check_quantize(settings["quantize"], spec, resolve_device(settings["device"]))
    limits.check_before_load(settings, family, spec.source)
    method = settings["method"]
    if method == "cfg" and family.cfg_refused:
        raise UsageError(family.cfg_refused)
    if method == "vsf" and settings.get("compat") == "reference" and family.attention == "joint":
        family.refuse_reference_layout()
    guidance_is_cfg = family.cfg_argument == "guidance_scale"
    batched_cfg = guidance_is_cfg and not family.cfg_separate_pass
    if batched_cfg and method not in ("none", "cfg") and settings["guidance_scale"] > family.cfg_off_at:
        raise UsageError(f"{method} replaces CFG and needs --guidance-scale <= {family.cfg_off_at:g} "
                         f"(got {settings['guidance_scale']})")
    taken = guidance.parameters(method)
    given = {k: settings[k] for k in taken if settings[k] is not None}
    # Built here so ranges are checked before anything loads; unset knobs take the method's defaults.
    guide = guidance.create(method, **given)
    settings.update({k: None for k in METHOD_SETTINGS}, **guide.model_dump())
    if method == "cfg":
        if guidance_is_cfg:
            settings["guidance_scale"] = guide.pipeline_scale(family)
        if spec.distilled:
            warn(f"{spec.alias} is distilled; classifier-free guidance on it is not what it was trained for "
                 "(the paper's CFG baseline is sd35-large at 28 steps)")
    settings["family"] = spec.family
    return settings


def nearest_frame_counts(frames: int, step: int) -> list[int]:
    """The valid frame counts (1 + k * step) next to `frames`."""
    below = (frames - 1) // step * step + 1
    return [n for n in (below, below + step) if n >= 1]


def _check_video(settings: dict, family, spec, warn: Callable[[str], None]) -> None:
    """Video settings only for video models; frame counts the VAE can pack; the trim leaves frames.

    A model's default frame count is the clip length it was trained on (81 for Wan 2.1 and A14B, 121 for TI2V-5B);
    longer clips drift, so they get a warning.
    """
    if not family.video:
        given = [k for k in VIDEO_SETTINGS if settings[k] is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only for video models (vsf video --model wan)")
        return
    frames, step = settings["frames"], family.frame_step
    if (frames - 1) % step:
        raise UsageError(f"frames: {frames} is not {step}k+1 ({family.label} makes 1 + {step}k frames); "
                         f"use {' or '.join(map(str, nearest_frame_counts(frames, step)))}")
    if spec.frames and frames > spec.frames:
        warn(f"{frames} frames is more than the {spec.frames} {spec.alias} was trained on; expect repetition or drift")
    if settings["trim_start"] >= frames:
        raise UsageError(f"trim_start: dropping {settings['trim_start']} of {frames} frames leaves none")
    if settings["vae_tiling"] is None:
        settings["vae_tiling"] = False


def stored(settings: dict) -> dict:
    """The GenSettings fields of a metadata dict (what `--from` replays), without unset values."""
    return {k: v for k, v in settings.items() if k in FIELDS and v is not None}


DEFAULT_STRENGTH = 0.6  # diffusers' default for SD3 image-to-image and inpainting


def _image_inputs(merged: dict, warn: Callable[[str], None], spec, family) -> dict:
    """Check the input image and mask, record their sha256, and size the output from the image."""
    from vsf_cli.render.images import open_image, sha256

    if not merged.get("image"):
        raise UsageError("--mask needs --image")
    image = open_image(merged["image"])
    for key in ("image", "mask"):
        if merged.get(f"{key}_sha256") and merged.get(key) and merged[f"{key}_sha256"] != sha256(merged[key]):
            warn(f"{merged[key]} changed since the replayed image was made (its sha256 differs)")
    if family.video:
        return _first_frame(merged, image, spec) | {"image_sha256": sha256(merged["image"])}
    values = {"image_sha256": sha256(merged["image"])}
    if spec.task == "edit":  # the edit pipeline reads the whole image; there is no strength or mask
        for key in ("mask", "strength"):
            if merged.get(key) is not None:
                raise UsageError(f"--{key} is for image-to-image; {spec.alias} edits the whole --image")
    elif merged.get("mask") and "inpaint" not in family.pipelines:
        raise UsageError(f"{family.label} has no inpainting pipeline in diffusers; drop --mask")
    elif not merged.get("mask") and not family.img2img_strength:  # the image is a reference the model edits from
        if merged.get("strength") is not None:
            raise UsageError(f"--strength: {family.label} conditions on --image instead of repainting a noised copy; "
                             "drop --strength, or add --mask to inpaint")
        values["strength"] = None
    else:
        values["strength"] = merged.get("strength", DEFAULT_STRENGTH)
    if "width" not in merged and "height" not in merged:
        multiple = family.size_multiple
        width, height = (side // multiple * multiple for side in image.size)
        if (width, height) != image.size:
            warn(f"{merged['image']} is {image.size[0]}x{image.size[1]}; using {width}x{height}, "
                 f"the nearest multiples of {multiple} below")
        values.update(width=width, height=height)
    if merged.get("mask"):
        mask = open_image(merged["mask"])
        values["mask_sha256"] = sha256(merged["mask"])
        if mask.size != image.size:
            warn(f"mask {merged['mask']} is {mask.size[0]}x{mask.size[1]}, the image {image.size[0]}x{image.size[1]}; "
                 "the mask is resized to match")
    return values


def _first_frame(merged: dict, image, spec) -> dict:
    """Image-to-video: the model's pixel area at the image's aspect ratio (as diffusers' Wan I2V example sizes it)."""
    if spec.task != "img2video" and not spec.takes_image:
        from vsf_cli.models.registry import MODELS

        known = ", ".join(alias for alias, m in MODELS.items() if m.task == "img2video" or m.takes_image)
        raise UsageError(f"{spec.alias} makes video from text; --image needs an image-to-video model ({known})")
    for key in ("mask", "strength"):
        if merged.get(key) is not None:
            raise UsageError(f"--{key} is for images; image-to-video takes --image only")
    if "width" in merged or "height" in merged:
        return {}
    aspect = image.size[1] / image.size[0]
    area = spec.width * spec.height
    multiple = spec.size_multiple or families.get(spec.family).size_multiple
    height = max(multiple, round((area * aspect) ** 0.5) // multiple * multiple)
    width = max(multiple, round((area / aspect) ** 0.5) // multiple * multiple)
    return {"width": width, "height": height}
