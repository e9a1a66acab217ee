"""User-facing errors and the exit code each one maps to (see README, "Exit codes")."""


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
