"""Output paths: prompt slugs, `--output` template expansion, collision checks and atomic writes."""

import os
import re
import secrets
import string
import unicodedata
from collections.abc import Callable
from pathlib import Path

from vsf_cli.errors import UsageError, VsfError

FIELDS = ("index", "seed", "slug", "model", "method", "id")
_ALLOWED = "allowed fields: " + ", ".join("{" + f + "}" for f in FIELDS)
_SEPARATORS = {"/", "\\", os.sep, os.altsep or "/"}


def slugify(text: str, max_len: int = 48) -> str:
    """Lowercase ASCII words joined by '-', cut at a word boundary; 'image' when nothing is left."""
    # NFKD splits accented letters so "café" keeps its "e" instead of losing the whole letter.
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > max_len:
        cut = slug[: max_len + 1]
        slug = cut.rsplit("-", 1)[0] if "-" in cut else slug[:max_len]
        slug = slug.strip("-")
    return slug or "image"


def _sanitise(value: str) -> str:
    """Make a field value safe as part of one path component."""
    for sep in _SEPARATORS:
        value = value.replace(sep, "--")
    value = "".join(c for c in value if c.isprintable())
    # A run of dots could form ".." once a format spec pads or trims it; one dot is enough for "3.5".
    # A leading dot would hide the file.
    return re.sub(r"\.{2,}", ".", value).lstrip(".")


def _parts(path: str) -> list[str]:
    return [p for p in re.split(r"[/\\]", path) if p]


def _template_folder(template: str) -> str:
    """The folder the template names before its first field: 'out' for 'out/{seed}.png', '.' for '{seed}.png'."""
    prefix = ""
    for literal, field, _, _ in string.Formatter().parse(template):
        prefix += literal  # unescaped, so "{{" matches what format() writes
        if field is not None:
            break
    folder = prefix[: max(prefix.rfind(s) for s in _SEPARATORS) + 1]
    return os.path.normpath(folder) if folder else "."


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.normcase(os.path.normpath(path)), os.path.normcase(os.path.normpath(folder))
    if os.path.isabs(path) != os.path.isabs(folder):
        return False
    p, f = _parts(path), [x for x in _parts(folder) if x != "."]
    # After normpath any ".." is leading, so one past the folder's own parts means the path climbs out.
    return p[: len(f)] == f and ".." not in p[len(f):]


def expand(template: str, fields: dict, allow_parent: bool = False) -> Path:
    """Fill an output template such as 'out/{index:05d}_{seed}_{slug}.png'; the result stays in its folder."""
    if not allow_parent and ".." in _parts(template):
        raise UsageError(f"output template {template!r} contains '..'; parent folders are only allowed on the command line")
    if not re.search(r"\.[A-Za-z0-9]+\Z", template):
        raise UsageError(f"output template {template!r} must end in a file extension such as .png")
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise UsageError(f"malformed output template {template!r} ({e}); {_ALLOWED}") from None
    for name in names:
        # Plain names only: "{model.__class__}" or "{0}" would reach into Python objects or positional args.
        if name not in FIELDS:
            raise UsageError(f"unknown field {{{name}}} in output template {template!r}; {_ALLOWED}")
        if name not in fields:
            raise UsageError(f"field {{{name}}} is not available for this output template")
    values = {k: _sanitise(v) if isinstance(v, str) else v for k, v in fields.items() if k in FIELDS}
    try:
        expanded = template.format(**values)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise UsageError(f"cannot fill output template {template!r}: {e}; {_ALLOWED}") from None
    folder = _template_folder(template)
    if not _inside(expanded, folder):
        raise UsageError(f"output template {template!r} gives {expanded!r}, which is outside {folder!r}")
    return Path(expanded)


def check_free(paths: list[Path], overwrite: bool, folders: bool = False) -> None:
    """Refuse planned outputs that collide with each other, or with existing files unless overwrite.

    With `folders`, outputs are folders (video frames), so an existing folder is replaced like a file; `.json`
    paths among them are the folders' settings sidecars, which are files."""
    seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        key = os.path.normcase(os.path.abspath(path))
        if key in seen:
            raise UsageError(
                f"output template gives the same path for images {seen[key] + 1} and {i + 1} ({path}); "
                "add {index} or {seed} to it"
            )
        seen[key] = i
    for path in paths:
        folder = folders and path.suffix.lower() != ".json"
        if path.is_dir() != folder and path.exists():
            raise UsageError(f"output {path} is {'not ' if folder else ''}a folder")
        if path.exists() and not overwrite:
            raise VsfError(f"{path} already exists (pass --overwrite to replace it)")


# atomic_write's temp files, `.NAME.HEX.partial.EXT`; group 1 is the NAME they will be renamed to.
TEMP_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}\.partial")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a hidden temp file next to `path`, then move it into place; never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder so os.replace is atomic; the real suffix last so PIL can infer the format from the name.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        # The same error (errno kept: a full disk is still ENOSPC), naming the file the user asked for, not the temp.
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(paths: list[Path]) -> None:
    """Refuse outputs whose folder cannot be made or written: a file where a folder should be, or no permission."""
    for folder in sorted({Path(p).parent for p in paths}):
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise UsageError(f"cannot write into {folder}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write into {folder}: {existing} is not writable")
