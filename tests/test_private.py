"""The private diffusers and torch names vsf relies on (vsf_cli/private.py) still exist: a rename fails here first."""

import importlib

import pytest
import torch

from vsf_cli import guidance, private


@pytest.mark.parametrize("path", private.NAMES, ids=lambda path: ".".join(path))
def test_private_name_exists(path):
    obj = importlib.import_module(path[0])
    for name in path[1:]:
        if name == "_context":  # set in StateManager.__init__, so it lives on instances
            from diffusers.hooks.hooks import BaseState

            obj = obj(BaseState)
        assert hasattr(obj, name), f"{'.'.join(path)} is gone: vsf_cli/private.py needs updating"
        obj = getattr(obj, name)


def test_every_private_name_used_is_listed():
    """Names with a leading underscore from diffusers or torch appear in the package only where private.py lists them."""
    import re
    from pathlib import Path

    listed = {path[-1] for path in private.NAMES}
    package = Path(private.__file__).parent
    used = set()
    for file in package.rglob("*.py"):
        text = file.read_text(encoding="utf-8")
        used |= set(re.findall(r"(?:pipe|aten|state_manager)\._(\w+)", text))
    assert {f"_{name}" for name in used} <= listed, {f"_{name}" for name in used} - listed


def test_an_attention_computed_another_way_is_refused(monkeypatch, sd3):
    """An attention backend that bypasses F.scaled_dot_product_attention cannot be guided: one clear error."""
    import torch.nn.functional as F

    def by_hand(query, key, value, *args, **kwargs):
        return torch.softmax(query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5, dim=-1) @ value

    monkeypatch.setattr(F, "scaled_dot_product_attention", by_hand)
    with pytest.raises(Exception, match="without F.scaled_dot_product_attention"):
        with guidance.apply(sd3, "vsf", negative="wheels"):
            sd3(prompt="a bike", num_inference_steps=1, height=32, width=32, guidance_scale=0.0,
                max_sequence_length=16, output_type="latent")
