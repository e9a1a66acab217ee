"""Removable pipeline changes shared by every method: a call hook per denoiser, an attention-call catcher per
attention module, and the stacked negatives.

No processor is replaced or copied. Each guided attention module runs its own processor (projections, norms, RoPE
and all) inside a `TorchFunctionMode` that catches its `F.scaled_dot_product_attention` call and hands (q, k, v) to
the method's kernel, as diffusers' own `hooks/layer_skip.py` does for skipped attention scores.

Modules inside the blocks (attention, carrying blocks) are wrapped by `Installation.wrap`, not diffusers' hooks:
torch.compile then sees one function on every block and every install, so a compiled model is not recompiled
per block or per prompt (a diffusers hook is a functools.partial per module, and compiles once per module).
"""

import inspect
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from vsf_cli import private
from vsf_cli.errors import UsageError, VsfError
from vsf_cli.guidance.attention import join_masks

HOOK_NAME = "vsf_cli.guidance"


class Installation:
    """Removable changes to a pipeline, undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def hook(self, module: torch.nn.Module, hook: ModelHook) -> None:
        registry = HookRegistry.check_if_exists_or_initialize(module)
        registry.register_hook(hook, HOOK_NAME)
        self._undo.append(lambda: registry.remove_hook(HOOK_NAME, recurse=False))

    def wrap(self, module: torch.nn.Module, wrapper: Callable) -> None:
        """Run `wrapper(module, *args, **kwargs)` as the module's forward; it calls `replaced_forward(module, ...)`
        for the forward it replaced (the class's, or one another library set on the instance)."""
        if guided(module):
            raise VsfError(f"guidance is already installed on this {type(module).__name__}; leave the first "
                           "guidance.apply block before entering another")
        previous = module.__dict__.get("forward")
        # The class's own forward is kept as its function, shared by every module of the class, not a bound method.
        replaced = (type(module).forward, True) if previous is None else (previous, False)
        module.__dict__.update({_WRAPPER: wrapper, _PREVIOUS: replaced})
        module.forward = types.MethodType(_wrapped_forward, module)

        def undo() -> None:
            del module.__dict__[_WRAPPER], module.__dict__[_PREVIOUS]
            if previous is None:
                del module.forward
            else:
                module.forward = previous

        self._undo.append(undo)

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


_WRAPPER, _PREVIOUS = "_vsf_wrapper", "_vsf_previous_forward"


def _wrapped_forward(module: torch.nn.Module, *args, **kwargs):
    return module.__dict__[_WRAPPER](module, *args, **kwargs)


def replaced_forward(module: torch.nn.Module, *args, **kwargs):
    """Call the forward a wrapper replaced."""
    forward, unbound = module.__dict__[_PREVIOUS]
    return forward(module, *args, **kwargs) if unbound else forward(*args, **kwargs)


def guided(module: torch.nn.Module) -> bool:
    """Whether guidance is installed on this module: a call hook, or a wrapped forward."""
    registry = getattr(module, "_diffusers_hook", None)
    return _WRAPPER in module.__dict__ or (registry is not None and registry.get_hook(HOOK_NAME) is not None)


def denoisers(pipe, family) -> list[torch.nn.Module]:
    """The pipeline's denoising models that the family names and the pipeline has (Wan 2.2 has two)."""
    found = [getattr(pipe, name, None) for name in family.denoisers]
    return [model for model in found if model is not None]


def install(pipe, family, state, active: Callable[[object, dict], bool] | None, add_negative: Callable[[dict], dict],
            attend: Callable) -> Installation:
    """Hook every denoiser call, and catch the attention call of every attention module the family guides.

    Per call: the family checks the pipeline, `state.active` is set (conditional pass, and `active(pipe, kwargs)` if
    given), and an active call's kwargs, all by name, become `add_negative(kwargs)`. A family with a `carrier` has
    the negative carried beside its blocks (`state.carried`); one with `text_rotary` has the appended tokens' rotary
    rows placed by the family (`state.n_positive` says where they start). In an active call each guided module's
    attention call goes to `attend(query, key, value, key_mask=...)`, all (batch, heads, tokens, head_dim) and the
    key mask (batch, keys) or None; it returns the output, or None for an attention call that is not the text one
    (the stock call then runs). Inactive calls run stock.
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
            for block in family.carrier.blocks(denoiser) if family.carrier else ():
                installed.wrap(block, _Carry(state, family.carrier, block))
            if family.text_rotary is not None:
                installed.hook(family.text_rotary(denoiser), _RotaryHook(state, family.place_text_rotary))
            for attn in family.attentions(denoiser):
                installed.wrap(attn, _Attention(state, attend))
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
        return (), self.before(by_name(module, args, kwargs), context is None or context.name != "uncond")

    def reset_state(self, module):
        return module


def by_name(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """A forward call's arguments all by name (Z-Image's pipeline passes its transformer's positionally)."""
    if not args:
        return kwargs
    bound = inspect.signature(type(module).forward).bind_partial(module, *args, **kwargs).arguments
    return dict(list(bound.items())[1:])  # without `self`


class _Carry:
    """Carries extra tokens beside one block's sequence: the block sees [sequence, extra], the model the sequence.

    `carried` holds the extra tokens' states, rotary table and key mask (see `families.Carrier`); the states after
    the block are kept for the next one.
    """

    def __init__(self, state, carrier, block: torch.nn.Module) -> None:
        self.state = state
        self.carrier = carrier
        # The block's parameter names, read once here: torch.compile cannot trace inspect.signature.
        self.names = list(inspect.signature(type(block).forward).parameters)[1:]

    def __call__(self, module, *args, **kwargs):
        if not self.state.active:
            return replaced_forward(module, *args, **kwargs)
        c, carried = self.carrier, self.state.carried
        kwargs = dict(zip(self.names, args)) | kwargs
        hidden, mask = kwargs[c.hidden], kwargs.get(c.mask)
        length = hidden.shape[1]
        mask = join_masks([(mask, length), (carried.mask, carried.hidden.shape[1])], hidden.shape[0], hidden.device)
        kwargs.update({c.hidden: torch.cat([hidden, carried.hidden.to(hidden.dtype)], dim=1), c.mask: mask,
                       c.rotary: torch.cat([kwargs[c.rotary], carried.rotary], dim=1)})
        output = replaced_forward(module, **kwargs)
        carried.hidden = output[:, length:]
        return output[:, :length]


class _RotaryHook(ModelHook):
    """In an active call, hands the rotary module's output and the positive's token count to `place`."""

    def __init__(self, state, place: Callable) -> None:
        super().__init__()
        self.state = state
        self.place = place

    def post_forward(self, module, output):
        return self.place(output, self.state.n_positive) if self.state.active else output


class _Attention:
    """Runs an attention module's own forward with its attention call handed to the guidance kernel."""

    def __init__(self, state, attend: Callable) -> None:
        self.state = state
        self.attend = attend

    def __call__(self, module, *args, **kwargs):
        if not self.state.active:
            return replaced_forward(module, *args, **kwargs)
        catcher = _AttentionCall(self.attend)
        with catcher:
            out = replaced_forward(module, *args, **kwargs)
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
        if func is torch.Tensor.unflatten:
            # The one Tensor method written in Python around a super() call, which torch.compile cannot trace from
            # inside a mode; the function form computes the same.
            return torch.unflatten(*args, **kwargs)
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query, key, value = (kwargs.pop(name) if name in kwargs else args[i]
                             for i, name in enumerate(("query", "key", "value")))
        options = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"), args[3:])) | kwargs
        key_mask = _key_mask(options.get("attn_mask"), key)
        _check_plain({**options, "attn_mask": None}, query.shape[-1])
        out = self.attend(query, key, value, key_mask=key_mask)
        if out is None:
            return func(query, key, value, **options)
        self.guided = True
        return out


def _key_mask(mask: torch.Tensor | None, key: torch.Tensor) -> torch.Tensor | None:
    """A boolean attention mask that only drops keys, (batch, 1, 1, keys), as (batch, keys); None if it keeps all.

    That is the one kind of mask the kernels take (Z-Image masks the padding of shorter captions in a batch);
    any other mask is refused.
    """
    if mask is None:
        return None
    if mask.dtype != torch.bool or mask.ndim != 4 or mask.shape[1:3] != (1, 1) or mask.shape[-1] != key.shape[2]:
        raise UsageError(f"guidance cannot take over an attention call with a {mask.dtype} mask of shape "
                         f"{tuple(mask.shape)}; it takes boolean key masks (batch, 1, 1, keys)")
    mask = mask[:, 0, 0, :]
    return None if bool(mask.all()) else mask


def _check_plain(options: dict, head_dim: int) -> None:
    """The kernels compute plain softmax attention; refuse a call that asks for anything else."""
    unusual = [name for name, value in options.items()
               if not (value is None or value is False or value == 0.0 or (name == "scale" and value == head_dim**-0.5))]
    if unusual:
        raise UsageError(f"guidance cannot take over an attention call that sets {', '.join(unusual)}")


def encode_negatives(pipe, family, negatives: list, padded: bool) -> "NegativeTokens":
    """Each prompt's negative tokens. An entry that is a list holds several negatives: each is encoded on its own,
    with its own special tokens, and their tokens are joined, so all of them are flipped."""
    embeds = []
    for entry in negatives:
        texts = [entry] if isinstance(entry, str) else entry
        parts = [family.encode_negative(pipe, text, padded=padded) for text in texts]
        embeds.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
    return NegativeTokens(embeds)


class NegativeTokens:
    """Per-prompt negative embeddings, stacked for a call's batch, device and dtype once and reused every step."""

    def __init__(self, embeds: list[torch.Tensor]) -> None:
        self.embeds = embeds
        self._stacked: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def like(self, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens, key mask or None) matching the positive's batch, device and dtype (see `pad_negatives`)."""
        return self.stacked(positive.shape[0], positive.device, positive.dtype)

    def stacked(self, batch: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = (batch, device, dtype)
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
