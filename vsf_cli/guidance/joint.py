"""Joint-attention (MMDiT) plumbing shared by every method: the negative joins the text stream as a collector N0."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vsf_cli.errors import UsageError
from vsf_cli.guidance.install import Installation, encode_negatives, install

JointKernel = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class Carried:
    """A carrier family's negative beside the blocks: its states (updated by each block), rotary table, key mask."""

    hidden: torch.Tensor
    rotary: torch.Tensor
    mask: torch.Tensor | None


class JointState:
    """Per-call layout of the text stream [positive, negative], written by the call hook and read by the catcher."""

    def __init__(self, kernel: JointKernel, text_first: bool) -> None:
        self.kernel = kernel
        self.text_first = text_first  # Flux: [text, image]; SD3, Z-Image: [image, text]
        self.active = True  # False: this call runs the stock attention (e.g. NAG past `nag_end`)
        self.n_positive = 0
        self.n_text = 0  # positive + negative tokens in the joint sequence
        self.negative_mask: torch.Tensor | None = None
        self.carried: Carried | None = None

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One joint attention call: split image, positive and negative tokens, run the kernel, put them back.

        `key_mask` (batch, keys), the call's own, drops padding keys: those of shorter captions in a batch, and
        of shorter negatives when the call carries them.
        """
        n_image = query.shape[2] - self.n_text
        text = 0 if self.text_first else n_image  # where the text tokens start
        split = text + self.n_positive  # where the negative starts
        image_at = slice(self.n_text, None) if self.text_first else slice(0, n_image)
        negative_at = slice(split, text + self.n_text)
        image = tuple(x[:, :, image_at] for x in (query, key, value))
        positive = tuple(x[:, :, text:split] for x in (query, key, value))
        negative = tuple(x[:, :, negative_at] for x in (query, key, value))
        masks = {"negative_mask": self.negative_mask}
        if key_mask is not None:  # the call's mask covers the negative too (Qwen-Image): keep both its drops
            context = torch.cat([key_mask[:, image_at], key_mask[:, text:split]], dim=1)
            negative_keys = key_mask[:, negative_at]
            if self.negative_mask is not None:
                negative_keys = negative_keys & self.negative_mask
            masks = {"negative_mask": _dropping(negative_keys), "context_mask": _dropping(context)}
        image_out, positive_out, negative_out = self.kernel(image, positive, negative, **masks)
        parts = [positive_out, negative_out, image_out] if self.text_first else [image_out, positive_out, negative_out]
        return torch.cat(parts, dim=2)


def _dropping(mask: torch.Tensor) -> torch.Tensor | None:
    """The mask, or None when it keeps every key (the kernels then stay unmasked)."""
    return None if bool(mask.all()) else mask


def install_joint(
    pipe,
    family,
    negatives: list[str],
    kernel: JointKernel,
    *,
    padded: bool = False,
    reference_layout: bool = False,
    active: Callable[[object, dict], bool] | None = None,
) -> Installation:
    """Append the negative to the text stream on every transformer call and route joint attention through `kernel`.

    `padded` encodes the negative like a positive (NAG and NASA do; VSF must not, or padding gets flipped too).
    `reference_layout` reproduces the seed code's stream [P, Na, Nb] (docs/method.md §2.3): Na then acts as part of
    the positive, and Nb is the collector whose flipped copy the image reads.
    `active(pipe, transformer_kwargs)` may switch guidance off for a call; the stock attention then runs, as it does
    on a classifier-free-guidance unconditional pass.
    A family with a `carrier` (Z-Image) gets the negative beside its blocks instead of in the call's text.
    """
    if reference_layout:
        family.refuse_reference_layout()
    stack = encode_negatives(pipe, family, negatives, padded)
    state = JointState(kernel, family.text_first)

    def append_negative(kwargs: dict) -> dict:
        name = family.text_kwarg
        positive = kwargs[name]
        tokens, mask = stack.like(positive)
        if reference_layout and mask is not None:
            raise UsageError("compat=reference needs negatives of equal token length in one batch (as the seed code)")
        stream = [positive, tokens, tokens] if reference_layout else [positive, tokens]
        state.n_positive = positive.shape[1] + (tokens.shape[1] if reference_layout else 0)
        state.n_text = state.n_positive + tokens.shape[1]
        state.negative_mask = mask
        added = state.n_text - positive.shape[1]
        return family.extend_kwargs({**kwargs, name: torch.cat(stream, dim=1)}, added)

    prepared: dict[tuple, tuple] = {}  # a carrier family has one denoiser

    def carry_negative(kwargs: dict) -> dict:
        captions = kwargs[family.text_kwarg]  # Z-Image: one (tokens, width) tensor per batch item
        key = (len(captions), captions[0].device, captions[0].dtype)
        if key not in prepared:  # the preparation does not depend on the step, so it runs once per batch shape
            tokens, mask = stack.stacked(*key)
            with torch.no_grad():
                prepared[key] = family.carrier.prepare(getattr(pipe, family.denoisers[0]), tokens, mask, padded)
        hidden, rotary, mask = prepared[key]
        state.carried = Carried(hidden, rotary, mask)
        state.n_positive = family.carrier.positive_tokens(kwargs)
        state.n_text = state.n_positive + hidden.shape[1]
        return kwargs

    return install(pipe, family, state, active, carry_negative if family.carrier else append_negative, state.attend)
