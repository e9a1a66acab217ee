"""Cross-attention (Wan) plumbing shared by every method: the negative joins the text context the image reads."""

from collections.abc import Callable

import torch

from vsf_cli.errors import UsageError
from vsf_cli.guidance.install import Installation, encode_negatives, install

CrossKernel = Callable[..., torch.Tensor]


class CrossState:
    """Per-call layout of the text context [positive, negative], written by the call hook and read by the catcher."""

    def __init__(self, kernel: CrossKernel) -> None:
        self.kernel = kernel
        self.active = True  # False: this call runs the stock attention (the CFG unconditional pass)
        self.n_positive = 0  # context tokens before the negative (the positive and its padding)
        self.n_text = 0  # all text tokens
        self.negative_mask: torch.Tensor | None = None

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               key_mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """The text attention call: split keys and values at the positive length and run the kernel. Any other
        call (image-to-video's attention to the image tokens, whose keys are not the text) is left to run stock,
        and so is a masked one (Wan's cross-attention has no mask)."""
        if key.shape[2] != self.n_text or key_mask is not None:
            return None
        n = self.n_positive
        positive = key[:, :, :n], value[:, :, :n]
        negative = key[:, :, n:], value[:, :, n:]
        return self.kernel(query, positive, negative, negative_mask=self.negative_mask)


def negative_context(positive: torch.Tensor, tokens: torch.Tensor, padded: bool) -> tuple[torch.Tensor, int]:
    """The text context with the negative in it, and where the negative starts.

    Unpadded (VSF): the negative's n_N tokens replace the last n_N rows of the positive's zero padding, so the
    context stays L tokens, [positive + padding, negative], as if the positive were encoded to L - n_N tokens
    (docs/method.md §4.1). Padded (NAG, NASA): the negative, zero-padded to L like the positive, follows it.
    """
    length = positive.shape[1]
    if padded:
        padding = positive.new_zeros(positive.shape[0], length - tokens.shape[1], positive.shape[2])
        return torch.cat([positive, tokens, padding], dim=1), length
    start = length - tokens.shape[1]
    if start < 1 or bool(positive[:, start:].any()):
        raise UsageError(
            f"the prompt and the negative prompt together need more than the {length}-token text context; "
            "shorten one of them (or raise max_sequence_length)"
        )
    return torch.cat([positive[:, :start], tokens], dim=1), start


def install_cross(
    pipe,
    family,
    negatives: list[str],
    kernel: CrossKernel,
    *,
    padded: bool = False,
    active: Callable[[object, dict], bool] | None = None,
    reference_layout: bool = False,
) -> Installation:
    """Put the negative into the text context on every conditional transformer call; route cross-attention
    through `kernel`. `active(pipe, transformer_kwargs)` may switch guidance off for a call (NAG's `nag_end`).

    `reference_layout` changes nothing here: the seed code's Wan pipeline has the paper's layout (no duplicate).
    """
    stack = encode_negatives(pipe, family, negatives, padded)
    state = CrossState(kernel)

    def add_negative(kwargs: dict) -> dict:
        name = family.text_kwarg
        if padded and kwargs.get(family.image_context_kwarg) is not None:
            raise UsageError("NAG and NASA add a second text context, which image-to-video attention cannot split "
                             "from its image tokens (diffusers assumes exactly 512 text tokens); use vsf")
        tokens, mask = stack.like(kwargs[name])
        context, state.n_positive = negative_context(kwargs[name], tokens, padded)
        state.n_text = context.shape[1]
        images = kwargs.get(family.image_context_kwarg) if family.image_context_kwarg else None
        if images is not None and images.shape[1] == state.n_text:  # the catcher tells the two calls apart by length
            raise UsageError(f"{images.shape[1]} image-context tokens and as many text tokens cannot be told apart")
        # A padded negative is read as the pipeline reads a positive, padding included, so it needs no key mask.
        state.negative_mask = None if padded else mask
        return {**kwargs, name: context}

    return install(pipe, family, state, active, add_negative, state.attend)
