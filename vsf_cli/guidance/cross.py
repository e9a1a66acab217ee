"""Cross-attention (Wan) plumbing shared by every method: the negative joins the text context the image reads."""

from collections.abc import Callable

import torch

from vsf_cli.errors import UsageError
from vsf_cli.guidance.install import Installation, NegativeTokens, install

CrossKernel = Callable[..., torch.Tensor]


class CrossState:
    """Per-call layout of the text context [positive, negative], written by the call hook and read by processors."""

    def __init__(self, kernel: CrossKernel) -> None:
        self.kernel = kernel
        self.active = True  # False: this call runs the stock processors (the CFG unconditional pass)
        self.n_positive = 0  # context tokens before the negative (the positive and its padding)
        self.n_text = 0  # all text tokens; image-to-video models put image-context tokens in front of them
        self.negative_mask: torch.Tensor | None = None

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Split the text keys and values at the positive length and run the method's kernel."""
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
    stack = NegativeTokens([family.encode_negative(pipe, text) for text in negatives])
    state = CrossState(kernel)

    def add_negative(kwargs: dict) -> dict:
        name = family.text_kwarg
        tokens, mask = stack.like(kwargs[name])
        context, state.n_positive = negative_context(kwargs[name], tokens, padded)
        state.n_text = context.shape[1]
        # A padded negative is read as the pipeline reads a positive, padding included, so it needs no key mask.
        state.negative_mask = None if padded else mask
        return {**kwargs, name: context}

    return install(pipe, family, state, active, add_negative, family.cross_attentions(pipe.transformer),
                   family.CrossProcessor)
