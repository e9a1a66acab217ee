"""Removable pipeline changes shared by every method: a call hook per denoiser, an attention-call catcher per
attention module, and the stacked negatives.

No processor is replaced or copied. Each guided attention module runs its own processor (projections, norms, RoPE
and all) inside a `TorchFunctionMode` that catches its `F.scaled_dot_product_attention` call and hands (q, k, v) to
the method's kernel, as diffusers' own `hooks/layer_skip.py` does for skipped attention scores.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from vsf_cli import private
from vsf_cli.errors import UsageError, VsfError

HOOK_NAME = "vsf_cli.guidance"


class Installation:
    """Removable changes to a pipeline, undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def hook(self, module: torch.nn.Module, hook: ModelHook) -> None:
        registry = HookRegistry.check_if_exists_or_initialize(module)
        registry.register_hook(hook, HOOK_NAME)
        self._undo.append(lambda: registry.remove_hook(HOOK_NAME, recurse=False))

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


def denoisers(pipe, family) -> list[torch.nn.Module]:
    """The pipeline's denoising models that the family names and the pipeline has (Wan 2.2 has two)."""
    found = [getattr(pipe, name, None) for name in family.denoisers]
    return [model for model in found if model is not None]


def install(pipe, family, state, active: Callable[[object, dict], bool] | None, add_negative: Callable[[dict], dict],
            attend: Callable) -> Installation:
    """Hook every denoiser call, and catch the attention call of every attention module the family guides.

    Per call: the family checks the pipeline, `state.active` is set (conditional pass, and `active(pipe, kwargs)` if
    given), and an active call's kwargs become `add_negative(kwargs)`. In an active call each guided module's
    attention call goes to `attend(query, key, value)`, all (batch, heads, tokens, head_dim); it returns the output,
    or None for an attention call that is not the text one (the stock call then runs). Inactive calls run stock.
    All or nothing: a failure part-way undoes what was done.
    """

    def before(kwargs: dict, guided: bool) -> dict:
        family.check_call(pipe)
        state.active = guided and (active is None or active(pipe, kwargs))
        return add_negative(kwargs) if state.active else kwargs

    installed = Installation()
    try:
        for denoiser in denoisers(pipe, family):
            installed.hook(denoiser, _CallHook(before))
            for attn in family.attentions(denoiser):
                installed.hook(attn, _AttentionHook(state, attend))
    except BaseException:
        installed.remove()
        raise
    return installed


class _CallHook(ModelHook):
    """Runs `before(kwargs, guided)` ahead of every denoiser forward; it returns the kwargs to use.

    `guided` is False on a classifier-free-guidance unconditional pass. Wan and Flux (true CFG) run that pass as
    its own forward inside `transformer.cache_context("uncond")`, which only diffusers' *stateful* hooks see, through
    their StateManager; guidance applies to the conditional pass only, as in the VSF authors' Wan pipeline
    (docs/method.md §5).
    """

    _is_stateful = True

    def __init__(self, before: Callable[[dict, bool], dict]) -> None:
        super().__init__()
        self.before = before
        self.branch = StateManager(BaseState)

    def pre_forward(self, module, *args, **kwargs):
        context = private.cache_context(self.branch)  # None when the pipeline sets no cache context (SD3)
        return args, self.before(kwargs, context is None or context.name != "uncond")

    def reset_state(self, module):
        return module


class _AttentionHook(ModelHook):
    """Runs an attention module's own forward with its attention call handed to the guidance kernel."""

    def __init__(self, state, attend: Callable) -> None:
        super().__init__()
        self.state = state
        self.attend = attend

    def new_forward(self, module, *args, **kwargs):
        if not self.state.active:
            return self.fn_ref.original_forward(*args, **kwargs)
        catcher = _AttentionCall(self.attend)
        with catcher:
            out = self.fn_ref.original_forward(*args, **kwargs)
        if not catcher.guided:
            raise VsfError(
                f"{type(module).__name__} computed its attention without F.scaled_dot_product_attention, so guidance "
                "cannot reach it; if an attention backend was set (set_attention_backend), reset it to 'native'"
            )
        return out


class _AttentionCall(torch.overrides.TorchFunctionMode):
    """Catches F.scaled_dot_product_attention; every other torch call passes through untouched."""

    def __init__(self, attend: Callable) -> None:
        super().__init__()
        self.attend = attend
        self.guided = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query, key, value = (kwargs.pop(name) if name in kwargs else args[i]
                             for i, name in enumerate(("query", "key", "value")))
        options = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"), args[3:])) | kwargs
        _check_plain(options, query.shape[-1])
        out = self.attend(query, key, value)
        if out is None:
            return func(query, key, value, **options)
        self.guided = True
        return out


def _check_plain(options: dict, head_dim: int) -> None:
    """The kernels compute plain softmax attention; refuse a call that asks for anything else."""
    unusual = [name for name, value in options.items()
               if not (value is None or value is False or value == 0.0 or (name == "scale" and value == head_dim**-0.5))]
    if unusual:
        raise UsageError(f"guidance cannot take over an attention call that sets {', '.join(unusual)}")


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
