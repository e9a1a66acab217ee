"""Input images for image-to-image and inpainting: open with one-line errors, hash, and fit to the output size."""

import hashlib
from pathlib import Path

from vsf_cli.errors import UsageError


def open_image(path: str | Path):
    """Open and fully decode an image file, or raise a UsageError saying why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise UsageError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"cannot read {path}: it is a folder") from None
    except PermissionError:
        raise UsageError(f"cannot read {path}: permission denied") from None
    except UnidentifiedImageError:
        raise UsageError(f"cannot read {path}: not an image") from None
    except (OSError, ValueError, SyntaxError) as e:
        # PIL raises these for truncated files and oversized or damaged chunks.
        raise UsageError(f"cannot read {path}: damaged image ({e})") from None


def sha256(path: str | Path) -> str:
    """A file's sha256, read in chunks (outputs and videos can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fitted(path: str | Path, width: int, height: int, mode: str):
    """The image at `path` in `mode` (RGB, or L for masks), resized to the output size when it differs."""
    from PIL import Image

    image = open_image(path).convert(mode)
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)
