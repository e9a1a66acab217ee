"""Load a model once and render settings dicts to PNG files with metadata: what `gen` and `batch` share."""

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
        self.pipe = load_pipeline(resolve(settings["model"]), dtype=settings["dtype"], device=settings["device"],
                                  offload=settings["offload"], loras=settings["lora"], offline=offline)
        device = resolve_device(settings["device"])
        self.resolved = {"device": device, "dtype": resolve_dtype(settings["dtype"], device)}

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
        started = time.perf_counter()
        with guidance.apply(self.pipe, settings["method"], negative=settings["negative"], **params) as extra:
            image = self.pipe(
                prompt=settings["prompt"], num_inference_steps=settings["steps"], width=settings["width"],
                height=settings["height"], max_sequence_length=settings["max_sequence_length"],
                generator=torch.Generator("cpu").manual_seed(settings["seed"]), callback_on_step_end=step_done,
                **{"guidance_scale": settings["guidance_scale"], **extra},
            ).images[0]
        record = {**settings, "version": __version__, "seconds": round(time.perf_counter() - started, 3),
                  "resolved": self.resolved}
        save_png(image, path, record)
        return record
