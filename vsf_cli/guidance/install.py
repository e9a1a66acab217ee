"""Removable pipeline changes shared by every method: processor swaps, a per-call transformer hook, stacked negatives."""

from collections.abc import Callable

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from vsf_cli.errors import UsageError

HOOK_NAME = "vsf_cli.guidance"


class Installation:
    """Removable changes to a pipeline: transformer hooks and attention-processor swaps, undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def before_call(self, transformer: torch.nn.Module, before: Callable[[dict, bool], dict]) -> None:
        """Run `before(kwargs, guided)` ahead of every transformer forward; it returns the kwargs to use.

        `guided` is False on a classifier-free-guidance unconditional pass. Wan and Flux (true CFG) run that pass
        as its own forward inside `transformer.cache_context("uncond")`, which only diffusers' *stateful* hooks
        see; guidance applies to the conditional pass only, as in the VSF authors' Wan pipeline (docs/method.md §5).
        """
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.register_hook(_CallHook(before), HOOK_NAME)
        self._undo.append(lambda: registry.remove_hook(HOOK_NAME, recurse=False))

    def swap_processor(self, attn: torch.nn.Module, processor) -> None:
        original = attn.processor
        attn.set_processor(processor)
        self._undo.append(lambda: attn.set_processor(original))

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


def install(pipe, family, state, active: Callable[[object, dict], bool] | None, add_negative: Callable[[dict], dict],
            attentions: list[torch.nn.Module], processor: Callable) -> Installation:
    """Hook every transformer call and give each of `attentions` the processor `processor(state, original)`.

    Per call: the family checks the pipeline, `state.active` is set (conditional pass, and `active(pipe, kwargs)` if
    given), and an active call's kwargs become `add_negative(kwargs)`; inactive calls run the stock processors.
    All or nothing: a failure part-way undoes what was done.
    """

    def before(kwargs: dict, guided: bool) -> dict:
        family.check_call(pipe)
        state.active = guided and (active is None or active(pipe, kwargs))
        return add_negative(kwargs) if state.active else kwargs

    installed = Installation()
    try:
        installed.before_call(pipe.transformer, before)
        for attn in attentions:
            installed.swap_processor(attn, processor(state, attn.processor))
    except BaseException:
        installed.remove()
        raise
    return installed


class _CallHook(ModelHook):
    """A stateful diffusers hook: its StateManager receives the pipeline's cache context ("cond"/"uncond")."""

    _is_stateful = True

    def __init__(self, before: Callable[[dict, bool], dict]) -> None:
        super().__init__()
        self.before = before
        self.branch = StateManager(BaseState)

    def pre_forward(self, module, *args, **kwargs):
        context = self.branch._context  # None when the pipeline sets no cache context (SD3)
        return args, self.before(kwargs, context is None or context.name != "uncond")

    def reset_state(self, module):
        return module


class NegativeTokens:
    """Per-prompt negative embeddings, stacked for a call's batch, device and dtype once and reused every step."""

    def __init__(self, embeds: list[torch.Tensor]) -> None:
        self.embeds = embeds
        self._stacked: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def like(self, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens, key mask or None) matching the positive's batch, device and dtype (see `pad_negatives`)."""
        key = (positive.shape[0], positive.device, positive.dtype)
        if key not in self._stacked:
            self._stacked[key] = pad_negatives(self.embeds, *key)
        return self._stacked[key]


def pad_negatives(embeds: list[torch.Tensor], batch: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack per-prompt negative embeddings (1, n_i, C) into (batch, max n, C) plus a key mask (None if all equal).

    Prompts are repeated by the pipeline (`num_images_per_prompt`), so negatives are repeated the same way.
    """
    if batch % len(embeds):
        raise UsageError(f"{len(embeds)} negative prompts do not divide a batch of {batch} prompts")
    embeds = [e for e in embeds for _ in range(batch // len(embeds))]
    longest = max(e.shape[1] for e in embeds)
    tokens = torch.zeros(batch, longest, embeds[0].shape[-1], device=device, dtype=dtype)
    mask = torch.zeros(batch, longest, dtype=torch.bool, device=device)
    for i, e in enumerate(embeds):
        tokens[i, : e.shape[1]] = e[0].to(device=device, dtype=dtype)
        mask[i, : e.shape[1]] = True
    return tokens, (None if bool(mask.all()) else mask)
