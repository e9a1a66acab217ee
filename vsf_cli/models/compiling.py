"""`--compile`: torch.compile on the repeated blocks of every denoiser, guidance compiled in, eager if it fails."""

from __future__ import annotations

from collections.abc import Callable

BACKEND = "inductor"  # torch.compile's default; the tests use "aot_eager", which traces the same but skips codegen
# Graphs one block's code may hold before torch.compile gives up and runs it eagerly: a batch that switches methods
# holds a few per method (first and last block layouts, a static then a dynamic negative length).
RECOMPILE_LIMIT = 64


def blocks(denoiser) -> list:
    """The blocks to compile: those diffusers names as the model's repeated blocks, else every block of its block
    lists (SD3 names none)."""
    import torch

    named = getattr(denoiser, "_repeated_blocks", None)
    if named:
        return [m for m in denoiser.modules() if type(m).__name__ in named]
    return [block for child in denoiser.children() if isinstance(child, torch.nn.ModuleList) for block in child]


def compile_pipeline(pipe, family) -> None:
    """Compile each block of each denoiser in place (regional compilation: one graph serves every block of a kind).

    Guidance installs and leaves per call without a recompile: its wrappers are one function on every block, and
    its token counts, Python ints on the modules, are let be dynamic instead of compiling once per negative length.
    """
    import torch
    import torch._dynamo

    from vsf_cli.guidance.install import denoisers

    torch._dynamo.config.allow_unspec_int_on_nn_module = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for denoiser in denoisers(pipe, family):
        for block in blocks(denoiser):
            block.compile(backend=BACKEND)


def uncompile(pipe, family) -> None:
    """Run every block eagerly again."""
    from vsf_cli.guidance.install import denoisers

    for denoiser in denoisers(pipe, family):
        for block in blocks(denoiser):
            block._compiled_call_impl = None


def compile_failure(e: BaseException) -> bool:
    """Whether `e` is torch.compile failing (tracing or code generation), not the model."""
    import torch._dynamo.exc
    from torch._inductor.exc import InductorError

    return isinstance(e, torch._dynamo.exc.TorchDynamoException | InductorError)


def run(call: Callable, pipe, family, warn: Callable[[str], None]):
    """`call()` on a compiled pipeline; if compiling fails, say so in one line, go eager for good, and call again."""
    try:
        return call()
    except Exception as e:
        if not compile_failure(e):
            raise
        cause = e
        while cause.__cause__ is not None or getattr(cause, "inner_exception", None) is not None:
            cause = cause.__cause__ or cause.inner_exception  # the compiler's own error, not dynamo's wrapper
        text = str(cause).strip()
        warn(f"torch.compile failed here ({type(cause).__name__}: {text.splitlines()[0][:160] if text else '-'}); "
             "running eagerly")
        uncompile(pipe, family)
        return call()
