"""Load a model once and render settings dicts to PNG or video files with metadata: what `gen`, `video` and `batch`
share."""

import time
from collections.abc import Callable
from pathlib import Path

LOAD_KEYS = ("model", "dtype", "device", "offload", "lora")  # settings that need a fresh model load


class Renderer:
    """A loaded pipeline plus what was resolved while loading; `render` writes one image."""

    def __init__(self, settings: dict, *, offline: bool = False) -> None:
        from vsf_cli.models.loading import load_pipeline, resolve_device, resolve_dtype, set_offline
        from vsf_cli.models.registry import resolve

        set_offline(offline)  # before diffusers is imported
        self.load_settings = {k: settings[k] for k in LOAD_KEYS}
        spec = resolve(settings["model"])
        self.pipe = load_pipeline(spec, dtype=settings["dtype"], device=settings["device"],
                                  offload=settings["offload"], loras=settings["lora"], offline=offline)
        self.video = spec.frames is not None
        device = resolve_device(settings["device"])
        self.resolved = {"device": device, "dtype": resolve_dtype(settings["dtype"], device)}
        self.siblings: dict = {}

    def _pipeline_for(self, settings: dict):
        """The loaded pipeline, or its image-to-image / inpainting sibling sharing the loaded weights, plus the
        call's inputs for its task."""
        from vsf_cli.render.images import fitted

        size = settings["width"], settings["height"]
        if self.video:  # image-to-video models are loaded as such; the image is their first frame
            inputs = {"num_frames": settings["frames"], "output_type": "np"}
            return self.pipe, inputs | ({"image": fitted(settings["image"], *size, "RGB")} if settings["image"] else {})
        if not settings["image"]:
            return self.pipe, {}
        kind = "inpaint" if settings["mask"] else "img2img"
        if kind not in self.siblings:
            import diffusers

            from vsf_cli.models.families import family_of
            from vsf_cli.models.loading import quiet_libraries
            from vsf_cli.models.registry import PIPELINES

            sibling = getattr(diffusers, PIPELINES[family_of(self.pipe)][kind])
            with quiet_libraries():
                self.siblings[kind] = sibling.from_pipe(self.pipe)
            self.siblings[kind].set_progress_bar_config(disable=True)
        inputs = {"image": fitted(settings["image"], *size, "RGB"), "strength": settings["strength"]}
        if settings["mask"]:
            inputs["mask_image"] = fitted(settings["mask"], *size, "L")
        return self.siblings[kind], inputs

    def render(self, settings: dict, path: Path, on_step: Callable[[], None] = lambda: None) -> dict:
        """Generate `settings` (one seed) into `path` atomically; returns the metadata record written."""
        import torch

        from vsf_cli import __version__, guidance
        from vsf_cli.render.metadata import save_png

        if any(settings[k] != v for k, v in self.load_settings.items()):
            raise ValueError("settings need a different model load than this renderer's")

        def step_done(pipe, step, timestep, kwargs):
            on_step()
            return {}

        params = {k: settings[k] for k in guidance.parameters(settings["method"])}
        pipe, inputs = self._pipeline_for(settings)
        if self.video:
            if settings["vae_tiling"]:
                pipe.vae.enable_tiling()
            else:
                pipe.vae.disable_tiling()
        started = time.perf_counter()
        if settings["image"] and settings["strength"] == 0:
            output = inputs["image"]  # nothing is repainted: the input, at the output size
        else:
            with guidance.apply(pipe, settings["method"], negative=settings["negative"], **params) as extra:
                result = pipe(
                    prompt=settings["prompt"], num_inference_steps=settings["steps"], width=settings["width"],
                    height=settings["height"], max_sequence_length=settings["max_sequence_length"],
                    generator=torch.Generator("cpu").manual_seed(settings["seed"]), callback_on_step_end=step_done,
                    **inputs, **{"guidance_scale": settings["guidance_scale"], **extra},
                )
            output = result.frames[0] if self.video else result.images[0]
        record = {**settings, "version": __version__, "seconds": round(time.perf_counter() - started, 3),
                  "resolved": self.resolved}
        if self.video:
            from vsf_cli.render.video import save_video, to_uint8

            save_video(to_uint8(output[settings["trim_start"]:]), path, settings["fps"], record)
        else:
            save_png(output, path, record)
        return record
