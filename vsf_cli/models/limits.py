"""What a model can make, read from its component configs before any weights load: size, inpainting, experts."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from vsf_cli.errors import UsageError


@functools.lru_cache(maxsize=64)
def component_config(source: str, component: str) -> dict | None:
    """`component/config.json` of a local diffusers folder or of a hub repo already in the local cache; None when
    neither has it (a first download: the same checks then run on the loaded pipeline's configs)."""
    path = Path(source).expanduser() / component / "config.json"
    if not path.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(source, f"{component}/config.json")
        except Exception:  # noqa: BLE001 — not a hub id, or an unreadable cache: nothing to check against
            return None
        if not isinstance(found, str):
            return None
        path = Path(found)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def max_side(transformer: dict | None, vae: dict | None) -> int | None:
    """The largest width or height in pixels, for models with a learned position table (SD3: pos_embed_max_size
    patches of patch_size latents, each VAE-factor pixels); None when the model has no such limit (RoPE models)."""
    if not transformer or not vae or not transformer.get("pos_embed_max_size"):
        return None
    vae_factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    return int(transformer["pos_embed_max_size"]) * int(transformer.get("patch_size", 1)) * vae_factor


def check(settings: dict, family, transformer: dict | None, vae: dict | None) -> None:
    """Refuse a size the model cannot make, or inpainting it cannot do, in one line."""
    largest = max_side(transformer, vae)
    if largest is not None and max(settings["width"], settings["height"]) > largest:
        raise UsageError(f"size: {settings['width']}x{settings['height']} is larger than {settings['model']} can make "
                         f"(at most {largest} a side: its position table has {transformer['pos_embed_max_size']} patches)")
    if settings.get("mask") and family.inpaint_channels and transformer:
        channels = transformer.get("in_channels")
        if channels not in family.inpaint_channels:
            wanted = " or ".join(map(str, family.inpaint_channels))
            raise UsageError(f"{settings['model']} cannot inpaint: its inpainting pipeline needs a transformer with "
                             f"{wanted} input channels, and it has {channels}; drop --mask for image-to-image")


def check_before_load(settings: dict, family, source: str) -> None:
    """`check` against the configs on disk, when they are there; in a local folder, also that each LoRA aimed at
    one expert (`--lora low=...`) has that expert to go into."""
    check(settings, family, component_config(source, family.denoisers[0]), component_config(source, "vae"))
    if Path(source).expanduser().is_dir():
        from vsf_cli.models.loading import lora_target

        for lora in settings["lora"]:
            target = lora_target(lora, family)[0]
            if target is not None and component_config(source, target) is None:
                raise UsageError(f"LoRA {lora}: {settings['model']} has no {target}, so it has a single transformer "
                                 "and a prefix that names an expert does not apply; drop it")
