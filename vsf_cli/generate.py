"""Load a model once and render settings dicts to PNG or video files with metadata: what `gen`, `video` and `batch`
share."""

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vsf_cli.errors import VsfError

# Settings that need a fresh model load.
LOAD_KEYS = ("model", "dtype", "device", "offload", "lora", "quantize", "compile")


class Renderer:
    """A loaded pipeline plus what was resolved while loading; `render` writes one image."""

    def __init__(self, settings: dict, *, offline: bool = False, warn: Callable[[str], None] | None = None) -> None:
        from vsf_cli.models.loading import library_warnings, load_pipeline, resolve_device, resolve_dtype, set_offline
        from vsf_cli.models import families
        from vsf_cli.models.registry import resolve

        if warn is None:
            from vsf_cli.cli.common import warn
        self.warn = warn
        set_offline(offline)  # before diffusers is imported
        self.load_settings = {k: settings[k] for k in LOAD_KEYS}
        spec = resolve(settings["model"])
        with library_warnings(warn):
            self.pipe = load_pipeline(spec, dtype=settings["dtype"], device=settings["device"],
                                      offload=settings["offload"], loras=settings["lora"], offline=offline,
                                      quantize=settings["quantize"], compile=settings["compile"], warn=warn)
        self.family = families.get(spec.family)
        self.task = spec.task
        device = resolve_device(settings["device"])
        self.resolved = {"device": device, "dtype": resolve_dtype(settings["dtype"], device)}
        self.siblings: dict = {}

    def _pipeline_for(self, settings: dict):
        """The loaded pipeline, or its image-to-image / inpainting / image-to-video sibling sharing the loaded
        weights, plus the call's inputs for its task."""
        from vsf_cli.render.images import fitted

        size = settings["width"], settings["height"]
        if self.family.video:
            inputs = {"num_frames": settings["frames"], "output_type": "np"}
            if not settings["image"]:
                return self.pipe, inputs
            # Image-to-video models are loaded as such; a text-to-video model that takes a first frame (Wan 2.2
            # TI2V) gets its image-to-video sibling.
            loaded = type(self.pipe).__name__ == self.family.pipelines["img2video"]  # by name: importing chatters
            pipe = self.pipe if loaded else self._sibling("img2video")
            return pipe, inputs | {"image": fitted(settings["image"], *size, "RGB")}
        if not settings["image"]:
            return self.pipe, {"output_type": "np"}
        if self.task == "edit":  # the loaded pipeline edits its input image
            return self.pipe, {"image": fitted(settings["image"], *size, "RGB"), "output_type": "np"}
        kind = "inpaint" if settings["mask"] else "img2img"
        inputs = {"image": fitted(settings["image"], *size, "RGB"), "output_type": "np"}
        if settings["strength"] is not None:  # None: the family conditions on the image (FLUX.2)
            inputs["strength"] = settings["strength"]
        if settings["mask"]:
            inputs["mask_image"] = fitted(settings["mask"], *size, "L")
        return self._sibling(kind), inputs

    def _sibling(self, kind: str):
        """The family's pipeline for `kind` built once from the loaded components (no second load)."""
        if kind not in self.siblings:
            from vsf_cli.models.loading import quiet_libraries

            with quiet_libraries():
                self.siblings[kind] = self.family.pipeline_class(kind).from_pipe(self.pipe)
            self.siblings[kind].set_progress_bar_config(disable=True)
        return self.siblings[kind]

    def _guidance_arguments(self, settings: dict, denoiser) -> dict:
        """The pipeline's guidance arguments before the method's own: CFG off where it is its own argument
        (Qwen-Image's true_cfg_scale defaults to 4), and guidance_scale only where the model can take it."""
        family = self.family
        arguments = {"guidance_scale": settings["guidance_scale"]}
        if family.cfg_argument not in (None, "guidance_scale"):
            arguments[family.cfg_argument] = family.cfg_off_at
        if family.guidance_embedding and not denoiser.config.get(family.guidance_embedding):
            del arguments["guidance_scale"]  # Qwen-Image warns that a model without the embedding ignores it
        return arguments

    def render(self, settings: dict, path: Path, on_step: Callable[[], None] = lambda: None) -> dict:
        """Generate `settings` (one seed) into `path` atomically; returns the metadata record written."""
        import torch

        from vsf_cli import __version__, guidance, negatives
        from vsf_cli.models import compiling, limits
        from vsf_cli.models.loading import library_warnings
        from vsf_cli.render.metadata import save_png

        if any(settings[k] != v for k, v in self.load_settings.items()):
            raise ValueError("settings need a different model load than this renderer's")

        def step_done(pipe, step, timestep, kwargs):
            on_step()
            return {}

        params = {k: settings[k] for k in guidance.parameters(settings["method"])}
        pipe, inputs = self._pipeline_for(settings)
        if self.family.video:
            if settings["vae_tiling"]:
                pipe.vae.enable_tiling()
            else:
                pipe.vae.disable_tiling()
        denoiser = getattr(self.pipe, self.family.denoisers[0])
        limits.check(settings, self.family, denoiser.config, self.pipe.vae.config)  # configs a first download brought
        started = time.perf_counter()
        if settings["image"] and settings["strength"] == 0:
            output = np.asarray(inputs["image"], dtype=np.float32) / 255  # nothing is repainted: the input, resized
        else:
            with guidance.apply(pipe, settings["method"], negative=negatives.for_call(settings["negative"]),
                                max_sequence_length=settings["max_sequence_length"], **params) as extra, \
                    library_warnings(self.warn):
                def call():
                    return pipe(
                        prompt=settings["prompt"], num_inference_steps=settings["steps"], width=settings["width"],
                        height=settings["height"], max_sequence_length=settings["max_sequence_length"],
                        generator=torch.Generator("cpu").manual_seed(settings["seed"]), callback_on_step_end=step_done,
                        **inputs, **{**self._guidance_arguments(settings, denoiser), **extra},
                    )

                result = compiling.run(call, self.pipe, self.family, self.warn) if settings["compile"] else call()
            output = result.frames[0] if self.family.video else result.images[0]
        if not np.isfinite(output).all():
            raise VsfError(
                "the output holds NaN or inf values, so nothing was written; likely float16 overflow (try --dtype "
                "bfloat16 or float32), or a --scale / --guidance-scale far outside its useful range")
        record = {**settings, "version": __version__, "seconds": round(time.perf_counter() - started, 3),
                  "resolved": self.resolved}
        if self.family.video:
            from vsf_cli.render.video import save_video

            save_video(to_uint8(output[settings["trim_start"]:]), path, settings["fps"], record)
        else:
            from PIL import Image

            save_png(Image.fromarray(to_uint8(output)), path, record)
        return record


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Floats in [0, 1], as pipelines return them with output_type "np", to 8-bit RGB (diffusers' own rounding)."""
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
