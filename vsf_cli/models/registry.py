"""The one table of per-model defaults: aliases, hub ids, families, steps, size, VSF scale/offset and LoRAs."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from vsf_cli.errors import UsageError
from vsf_cli.models import families

@dataclass(frozen=True)
class ModelSpec:
    """One model and the settings it works well with; flags and presets override any of them."""

    alias: str
    family: str  # a name in vsf_cli.models.families
    hub_id: str | None
    gated: bool
    steps: int
    width: int
    height: int
    scale: float  # VSF flip scale alpha
    offset: float  # VSF logit offset beta
    guidance_scale: float
    max_sequence_length: int
    loras: tuple[str, ...] = ()
    distilled: bool = False  # few-step distilled: CFG is off by design, and `--method cfg` warns
    note: str = ""
    # Video models only (None for image models): frame count (4k+1), playback rate, frames dropped from the start,
    # and the UniPC scheduler's flow shift.
    frames: int | None = None
    fps: int | None = None
    trim_start: int | None = None
    flow_shift: float | None = None
    task: str = "text"  # which of the family's pipelines loads it: "text", or "img2video" / "edit" (--image required)
    # Scheduler config values the distill LoRA was made for, set over the model's own: (name, value) pairs.
    scheduler: tuple[tuple[str, object], ...] = ()
    takes_image: bool = False  # text-to-video that also starts from --image (Wan 2.2 TI2V): img2video on its weights
    size_multiple: int | None = None  # VAE factor x patch size, where it is not the family's (TI2V-5B: 16 x 2)
    # Pipeline config (model_index.json) values the model's card sets: applied on load, and what tells a local
    # folder of this layout apart (Wan 2.2: the experts' boundary_ratio, TI2V's expand_timesteps).
    pipeline_config: tuple[tuple[str, object], ...] = ()

    folder: str | None = None  # a model shipped inside the package (the toys)

    @property
    def source(self) -> str:
        """What `from_pretrained` is given: the hub id, the shipped folder, or the local folder (kept in `alias`)."""
        return self.hub_id or self.folder or self.alias

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["loras"] = list(self.loras)
        d["scheduler"] = dict(self.scheduler)
        d["pipeline_config"] = dict(self.pipeline_config)
        return d


LIGHTNING_SCHEDULER = (("base_shift", math.log(3)), ("max_shift", math.log(3)), ("shift_terminal", None))


def _lightning(folder: str) -> tuple[str, ...]:
    """lightx2v's Wan2.2-Lightning LoRA pair in `folder` of its hub repo, each file into its expert, at 1.0."""
    return tuple(f"{expert}=lightx2v/Wan2.2-Lightning/{folder}/{expert}_noise_model.safetensors:1.0"
                 for expert in ("high", "low"))


_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        alias="toy", family="sd3", hub_id=None, gated=False, steps=8, width=32, height=32, scale=3.5, offset=0.1,
        guidance_scale=0.0, max_sequence_length=20, distilled=False,
        folder=str(Path(__file__).resolve().parents[1] / "toy" / "model"),
        note="a 32x32 SD3-architecture model trained on a procedural world, shipped in the package (docs/toy.md)",
    ),
    ModelSpec(
        alias="toy-z", family="zimage", hub_id=None, gated=False, steps=8, width=32, height=32, scale=3.5,
        offset=0.1, guidance_scale=0.0, max_sequence_length=32, distilled=False,
        folder=str(Path(__file__).resolve().parents[1] / "toy" / "model_z"),
        note="a 32x32 Z-Image-architecture (single-stream) model trained on the same world, shipped (docs/toy.md)",
    ),
    ModelSpec(
        alias="sd35-large-turbo", family="sd3", hub_id="stabilityai/stable-diffusion-3.5-large-turbo", gated=True,
        steps=8, width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=0.0, max_sequence_length=256,
        distilled=True, note="the VSF authors' README settings: 8 steps, no CFG, alpha 3.5, beta 0.1",
    ),
    ModelSpec(
        alias="sd35-large", family="sd3", hub_id="stabilityai/stable-diffusion-3.5-large", gated=True,
        steps=28, width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=1.0, max_sequence_length=256,
        note="28 steps as in Stability's card; guidance 1.0 turns CFG off so the negative goes through VSF only",
    ),
    ModelSpec(
        alias="sd35-medium", family="sd3", hub_id="stabilityai/stable-diffusion-3.5-medium", gated=True,
        steps=28, width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=1.0, max_sequence_length=256,
        note="has dual-attention layers (image-only attn2, which VSF leaves alone); CFG off via guidance 1.0",
    ),
    ModelSpec(
        alias="sd3-medium", family="sd3", hub_id="stabilityai/stable-diffusion-3-medium-diffusers", gated=True,
        steps=28, width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=1.0, max_sequence_length=256,
        note="SD3 (not 3.5) medium; untuned, uses the SD3.5 VSF numbers with CFG off via guidance 1.0",
    ),
    # Flux: the authors tuned alpha 3.5-6 on a port that flips only 19 of 57 blocks, and there the flip is partly
    # cancelled by an unflipped copy ((1 - alpha) V_N); every block flips here, so we start at the low end, 3.5.
    # Their port ignored the offset; 0.1 is the SD3 value, our untested choice. None of this was run on real weights.
    ModelSpec(
        alias="flux-schnell", family="flux", hub_id="black-forest-labs/FLUX.1-schnell", gated=False,
        steps=4, width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=0.0, max_sequence_length=256,
        distilled=True, note="timestep-distilled, 4 steps, no guidance; the VSF authors' main Flux target",
    ),
    ModelSpec(
        alias="flux-dev", family="flux", hub_id="black-forest-labs/FLUX.1-dev", gated=True,
        steps=28, width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=3.5, max_sequence_length=512,
        distilled=True, note="guidance-distilled: guidance_scale 3.5 feeds its guidance embedding (not CFG); "
        "the authors report it follows negatives less well than schnell",
    ),
    # FLUX.2: steps, size and guidance from the model cards (klein: 4 steps, 1024², guidance 1.0; dev: 50 steps,
    # guidance 4), which match the pipelines' defaults (512 text tokens, guidance 4.0 on dev). VSF's alpha and beta
    # are Flux.1's starting point, untested on FLUX.2's weights (docs/method.md §12).
    ModelSpec(
        alias="flux2-klein-4b", family="flux2_klein", hub_id="black-forest-labs/FLUX.2-klein-4B", gated=False,
        steps=4, width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=1.0, max_sequence_length=512,
        distilled=True, note="Apache-2.0; step-distilled, 4 steps, the pipeline ignores guidance; VSF numbers are "
        "Flux.1's, untested",
    ),
    ModelSpec(
        alias="flux2-klein-9b", family="flux2_klein", hub_id="black-forest-labs/FLUX.2-klein-9B", gated=True,
        steps=4, width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=1.0, max_sequence_length=512,
        distilled=True, note="FLUX Non-Commercial License (gated): non-commercial use only; step-distilled, 4 "
        "steps; VSF numbers are Flux.1's, untested",
    ),
    ModelSpec(
        alias="flux2-dev", family="flux2_dev", hub_id="black-forest-labs/FLUX.2-dev", gated=True,
        steps=50, width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=4.0, max_sequence_length=512,
        distilled=True, note="FLUX Non-Commercial License; guidance-distilled: guidance_scale 4 feeds its guidance "
        "embedding (not CFG), kept as is; 50 steps (the card: 28 is a fair trade-off); VSF numbers untested",
    ),
    # Z-Image-Turbo: the model card's 9 steps (8 transformer calls) at 1024 px and guidance 0. VSF's numbers are
    # SD3's, untested on real weights (docs/method.md §11).
    ModelSpec(
        alias="zimage-turbo", family="zimage", hub_id="Tongyi-MAI/Z-Image-Turbo", gated=False, steps=9,
        width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=0.0, max_sequence_length=512,
        distilled=True, note="Apache-2.0, 6B, single-stream; 9 steps, CFG off; VSF numbers are SD3's, untested",
    ),
    # Wan 2.1 text-to-video with a distill LoRA (docs/method.md §4; the numbers: docs/method.md §8). Our offset is
    # subtracted: the seed code's bias of -0.2 (its README) is offset 0.2 here, which damps the negative outside the
    # region it targets.
    # Qwen-Image (Apache-2.0): the card's 50 steps with true CFG 4; lightx2v's Lightning LoRAs are distilled with
    # shift 3 and CFG off, and their diffusers example sets the scheduler's base and max shift to log 3 with no
    # terminal shift. VSF's numbers are SD3's, untested on real weights (docs/method.md §13).
    ModelSpec(
        alias="qwen-image", family="qwenimage", hub_id="Qwen/Qwen-Image", gated=False, steps=50, width=1024,
        height=1024, scale=3.5, offset=0.1, guidance_scale=0.0, max_sequence_length=512,
        note="the 20B base, 50 steps; its CFG is true_cfg_scale (--method cfg); VSF guides the conditional pass only",
    ),
    ModelSpec(
        alias="qwen-image-lightning", family="qwenimage", hub_id="Qwen/Qwen-Image", gated=False, steps=8,
        width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=0.0, max_sequence_length=512,
        loras=("lightx2v/Qwen-Image-Lightning/Qwen-Image-Lightning-8steps-V1.1.safetensors",),
        scheduler=LIGHTNING_SCHEDULER, distilled=True,
        note="Qwen-Image with lightx2v's 8-step Lightning LoRA, CFG off; VSF numbers are SD3's, untested",
    ),
    ModelSpec(
        alias="qwen-image-edit-lightning", family="qwenimage", hub_id="Qwen/Qwen-Image-Edit-2509", gated=False,
        steps=8, width=1024, height=1024, scale=3.5, offset=0.1, guidance_scale=0.0, max_sequence_length=512,
        loras=("lightx2v/Qwen-Image-Lightning/Qwen-Image-Edit-2509/"
               "Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors",),
        scheduler=LIGHTNING_SCHEDULER, distilled=True, task="edit",
        note="edits --image (Qwen-Image-Edit-2509, 8-step Lightning LoRA, CFG off); VSF numbers untested",
    ),
    ModelSpec(
        alias="wan-1.3b", family="wan", hub_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", gated=False, steps=8,
        width=832, height=480, scale=1.5, offset=0.2, guidance_scale=1.0, max_sequence_length=512,
        loras=("Kijai/WanVideo_comfy/Wan21_CausVid_bidirect2_T2V_1_3B_lora_rank32.safetensors:0.5",),
        distilled=True, frames=81, fps=16, trim_start=5, flow_shift=3.0,
        note="with the CausVid LoRA (CC BY-NC 4.0: non-commercial) at 0.5, UniPC flow shift 3, as the VSF authors "
        "ran it; the first 5 frames, which start high-contrast, are dropped",
    ),
    ModelSpec(
        alias="wan-14b", family="wan", hub_id="Wan-AI/Wan2.1-T2V-14B-Diffusers", gated=False, steps=6,
        width=832, height=480, scale=1.0, offset=0.3, guidance_scale=1.0, max_sequence_length=512,
        loras=("Kijai/WanVideo_comfy/Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank32.safetensors:0.4",),
        distilled=True, frames=81, fps=16, trim_start=0, flow_shift=3.0,
        note="with the lightx2v step/CFG-distill LoRA at 0.4, 6 steps, bias -0.3 as the VSF authors' script; "
        "their alpha was 0.1 x prompt/negative token ratio, 1.0 here is untested",
    ),
    ModelSpec(
        alias="wan-i2v-14b", family="wan", hub_id="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", gated=False, steps=4,
        width=832, height=480, scale=1.0, offset=0.3, guidance_scale=1.0, max_sequence_length=512,
        loras=("lightx2v/Wan2.1-I2V-14B-480P-StepDistill-CfgDistill-Lightx2v/loras/"
               "Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors:1.0",),
        distilled=True, frames=81, fps=16, trim_start=0, flow_shift=3.0, task="img2video",
        note="image-to-video (--image): the first frame is given; lightx2v's I2V distill LoRA at its own 1.0 and 4 "
        "steps; VSF numbers are wan-14b's, untested (the VSF authors published no I2V setting)",
    ),
    # Wan 2.2 A14B: two experts, `transformer` (high noise) until the card's boundary_ratio, then `transformer_2`.
    # lightx2v's Wan2.2-Lightning makes them 4-step and CFG-free with one LoRA per expert, at 1.0 and sample shift 5
    # (its README; with UniPC and shift 5 the switch falls after step 2 of 4, where Lightning puts it). The VSF
    # numbers are wan-14b's, untested.
    ModelSpec(
        alias="wan22-t2v-a14b", family="wan", hub_id="Wan-AI/Wan2.2-T2V-A14B-Diffusers", gated=False, steps=4,
        width=1280, height=720, scale=1.0, offset=0.3, guidance_scale=1.0, max_sequence_length=512,
        loras=_lightning("Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1"),
        distilled=True, frames=81, fps=16, trim_start=0, flow_shift=5.0, pipeline_config=(("boundary_ratio", 0.875),),
        note="two experts (high noise, then low noise after boundary 0.875), each with its Wan2.2-Lightning LoRA "
        "(Seko V1.1) at 1.0: 4 steps, no CFG, shift 5; VSF guides both; alpha/beta are wan-14b's, untested",
    ),
    ModelSpec(
        alias="wan22-i2v-a14b", family="wan", hub_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers", gated=False, steps=4,
        width=1280, height=720, scale=1.0, offset=0.3, guidance_scale=1.0, max_sequence_length=512,
        loras=_lightning("Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1"),
        distilled=True, frames=81, fps=16, trim_start=0, flow_shift=5.0, task="img2video",
        pipeline_config=(("boundary_ratio", 0.9),),
        note="image-to-video (--image) with two experts (boundary 0.9), each with its Wan2.2-Lightning I2V LoRA "
        "(Seko V1) at 1.0: 4 steps, no CFG, shift 5; the image enters through the latents, no image tokens; "
        "alpha/beta are wan-14b's, untested",
    ),
    # TI2V-5B: one model over the Wan 2.2 VAE (16x spatial, 4x temporal: still 4k+1 frames), 121 frames at 24 fps,
    # text or a first frame. No distill LoRA ships for it, so it runs its card's 50 steps with CFG 5, and VSF guides
    # the conditional pass (docs/method.md §5).
    ModelSpec(
        alias="wan22-ti2v-5b", family="wan", hub_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers", gated=False, steps=50,
        width=1280, height=704, scale=1.0, offset=0.3, guidance_scale=5.0, max_sequence_length=512,
        frames=121, fps=24, trim_start=0, flow_shift=5.0, takes_image=True, size_multiple=32,
        pipeline_config=(("expand_timesteps", True),),
        note="text- or image-to-video (--image optional) at 720p, 121 frames, 24 fps; no distill LoRA: 50 steps, "
        "CFG 5, shift 5 as its card, VSF on the conditional pass; alpha/beta are wan-14b's, untested",
    ),
)

MODELS: dict[str, ModelSpec] = {s.alias: s for s in _SPECS}
DEFAULT_MODEL = "sd35-large-turbo"

ALIASES: dict[str, str] = {"wan": "wan-1.3b"}  # short names that `--model` also takes

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name


def resolve(name: str) -> ModelSpec:
    """Turn `--model` into a spec: an alias, a local diffusers folder, or a hub id of a known family.

    Aliases win over same-named folders (write ./sd35-large for the folder), and a hub id from the table gets its
    entry. Other folders and hub ids get their family's default numbers (for sd3, those of sd35-large-turbo:
    8 steps, no CFG); users override them with --steps, --size, --scale, --offset.
    """
    name = name.strip()
    if not name:
        raise UsageError(f"empty model name; known: {', '.join(MODELS)}")
    if name.lower() in MODELS or name.lower() in ALIASES:
        return MODELS[ALIASES.get(name.lower(), name.lower())]
    path = Path(name).expanduser()
    if path.is_dir():
        return _from_folder(path)
    if path.exists():
        raise UsageError(f"{name} is a file; pass a diffusers folder (with model_index.json), a hub id or an alias")
    if looks_like_hub_id(name):
        return _from_hub_id(name)
    raise UsageError(f"unknown model {name}; known: {', '.join(MODELS)} (or a local diffusers folder, or a hub id)")


def _defaults_from(base: ModelSpec, **fields) -> ModelSpec:
    # Without the table's distill LoRA there is no high-contrast start to trim.
    trim = {"trim_start": 0} if base.trim_start else {}
    # Nor the scheduler values its distill LoRA was made for.
    return dataclasses.replace(base, gated=False, loras=(), scheduler=(), distilled=False, **trim, **fields)


def _layout_entry(family: str, task: str, config: dict) -> ModelSpec:
    """The table entry a folder's numbers come from: one of its family and task whose `pipeline_config` the
    folder's model_index.json matches (a Wan 2.2 layout), else the family's default entry."""
    for spec in _SPECS:
        if (spec.family == family and spec.task == task and spec.pipeline_config
                and all(config.get(key) == value for key, value in spec.pipeline_config)):
            return spec
    return MODELS[families.get(family).default_model]


def _from_folder(path: Path) -> ModelSpec:
    index = path / "model_index.json"
    if not index.is_file():
        raise UsageError(f"{path} has no model_index.json; pass a diffusers-format pipeline folder")
    try:
        config = json.loads(index.read_text(encoding="utf-8"))
        class_name = config.get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise UsageError(f"cannot read {index}: {e}") from None
    found = families.by_pipeline_class(class_name) if isinstance(class_name, str) else None
    if found is None:
        supported = ", ".join(name for f in families.every() for name in f.pipelines.values())
        raise UsageError(
            f"{path} holds a {class_name} pipeline; supported families: {', '.join(families.NAMES)} "
            f"(pipelines {supported})"
        )
    family, task = found
    if task not in family.tasks_loaded:  # img2img / inpaint pipelines are built from the text pipeline's weights
        task = "text"
    base = _layout_entry(family.name, task, config)
    return _defaults_from(base, alias=str(path), hub_id=None, task=task,
                          note=f"local folder; defaults from {base.alias}, override with flags")


def _from_hub_id(hub_id: str) -> ModelSpec:
    for spec in _SPECS:
        if spec.hub_id is not None and spec.hub_id.lower() == hub_id.lower():
            return spec
    family = families.by_hub_id(hub_id)
    if family is None:
        raise UsageError(
            f"cannot tell which model family {hub_id} is; pass a known alias ({', '.join(MODELS)}) "
            "or a local diffusers folder"
        )
    task = "text"
    if "img2video" in family.pipelines and "-i2v-" in hub_id.lower():
        task = "img2video"
    elif "edit" in family.pipelines and "-edit" in hub_id.lower():
        task = "edit"
    base = MODELS[family.default_model]
    return _defaults_from(base, alias=hub_id, hub_id=hub_id, task=task,
                          note=f"hub id outside the table; defaults from {base.alias}, override with flags")
