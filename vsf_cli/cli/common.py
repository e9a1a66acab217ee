"""Shared CLI plumbing: the stderr console, logging verbosity and the error-to-exit-code boundary."""

import contextlib
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from vsf_cli.errors import VsfError, describe, is_out_of_memory


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would point stdout at /dev/null and exit 1; let errors_to_exit_codes give 141, as for stdout.
        self.quiet = True
        raise BrokenPipeError(32, "the reader of stderr left")


# stdout carries data only; everything for humans goes to stderr.
console = _Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one error line on stderr and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def warn(message: str) -> None:
    """Print one warning line on stderr."""
    console.print(f"[yellow]warning:[/] {escape(message)}")


def progress_bar(quiet: bool, eta: bool = True):
    """A rich progress bar on stderr: only on a terminal and without -q, and gone when done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    clock = TimeRemainingColumn() if eta else TimeElapsedColumn()
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), clock, console=console,
                    transient=True, disable=quiet or not console.is_terminal)


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
    except BrokenPipeError:
        # The reader left (`vsf ... | head`): stop quietly with the status a SIGPIPE gives, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):  # either may be the pipe; so the exit-time flush cannot fail again
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):  # not a real file (a test runner's capture)
                pass
        raise typer.Exit(141) from None
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 — the last line of defence for users, not for tests
        if debug:
            raise
        raise fail(describe(e) + ("" if is_out_of_memory(e) else " (run with --debug for the traceback)")) from None
