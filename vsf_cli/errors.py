"""User-facing errors, the exit code each one maps to (see README, "Exit codes"), and one-line descriptions."""

import sys


class VsfError(Exception):
    """A runtime error the user can act on: printed as one line, exit 1."""

    exit_code = 1


class UsageError(VsfError):
    """Bad flags, values or files given by the user: exit 2."""

    exit_code = 2


class GatedModelError(VsfError):
    """The hub refused the download (401/403): exit 4."""

    exit_code = 4


class OfflineError(VsfError):
    """Offline mode and the model is not in the local cache: exit 5."""

    exit_code = 5


def is_out_of_memory(e: BaseException) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to classify an error
    if torch is not None and isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def describe(e: BaseException) -> str:
    """One line for any exception; out of memory gets advice instead of a type name."""
    if is_out_of_memory(e):
        return ("out of memory on the device. Try --offload model (or sequential), a smaller --size, or --dtype "
                "bfloat16; for video also fewer --frames or --vae-tiling.")
    if isinstance(e, VsfError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:  # "out/x.png: No space left on device", not "OSError: [Errno 28] ..."
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
