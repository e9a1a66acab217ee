"""Shared CLI plumbing: the stderr console, logging verbosity and the error-to-exit-code boundary."""

import contextlib
import sys

import typer
from rich.console import Console

from vsf_cli.errors import VsfError

# stdout carries data only; everything for humans goes to stderr.
console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one error line on stderr and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def errors_to_exit_codes(debug: bool = False):
    """Turn user-facing failures into one line and an exit code; `--debug` re-raises with a traceback."""
    try:
        yield
    except VsfError as e:
        if debug:
            raise
        raise fail(str(e), e.exit_code) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 — the last line of defence for users, not for tests
        if debug:
            raise
        if _is_out_of_memory(e):
            raise fail(
                "out of memory on the device. Try --offload model (or sequential), a smaller --size, or --dtype bfloat16.",
            ) from None
        raise fail(f"{type(e).__name__}: {e} (run with --debug for the traceback)") from None


def _is_out_of_memory(e: Exception) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
