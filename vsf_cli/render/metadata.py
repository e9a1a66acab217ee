"""Generation metadata in output files: the A1111 `parameters` text, the full `vsf` JSON chunk, and reading both back."""

import json
import re
from pathlib import Path
from typing import Any

from vsf_cli.errors import UsageError
from vsf_cli.render.naming import atomic_write

_NEGATIVE = "Negative prompt:"
VIDEO_SUFFIXES = (".mp4", ".gif", ".webp")  # vsf writes these for videos only, with a .json sidecar
# The A1111/Forge infotext grammar: `Key: value` pairs, a value either JSON-quoted or up to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')

# A1111 key -> (our settings key, type); the order is the order written.
_KEYS: list[tuple[str, str, type]] = [
    ("Steps", "steps", int),
    ("Sampler", "sampler", str),
    ("Schedule type", "scheduler", str),
    ("Seed", "seed", int),
    ("Size", "", str),  # width x height, handled apart
    ("Model", "model", str),
    ("CFG scale", "guidance_scale", float),
    ("Guidance method", "method", str),
    ("VSF scale", "scale", float),
    ("VSF offset", "offset", float),
    ("VSF compat", "compat", str),
    ("NAG scale", "nag_scale", float),
    ("NAG tau", "nag_tau", float),
    ("NAG alpha", "nag_alpha", float),
    ("NAG end", "nag_end", float),
    ("NASA scale", "nasa_scale", float),
    ("Lora", "lora", list),
    ("Version", "version", str),
]


def _quote(value: Any) -> str:
    text = str(value)
    # A1111 quotes values that would break the comma-separated line; json.dumps escapes inner quotes.
    if any(c in text for c in ',\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def a1111_parameters(s: dict) -> str:
    """The A1111-style `parameters` text: prompt, optional `Negative prompt:` line, then one `Key: value` line."""
    lines = [str(s.get("prompt") or "")]
    if s.get("negative"):
        from vsf_cli.negatives import label

        lines.append(f"{_NEGATIVE} {label(s['negative'])}")
    pairs: list[tuple[str, Any]] = []
    for a1111, key, _ in _KEYS:
        if a1111 == "Size":
            if s.get("width") is not None and s.get("height") is not None:
                pairs.append(("Size", f"{s['width']}x{s['height']}"))
        elif a1111 == "VSF compat":
            if s.get("compat") not in (None, "paper"):
                pairs.append((a1111, s["compat"]))
        elif a1111 == "Lora":
            pairs += [(a1111, entry) for entry in s.get("lora") or []]
        elif a1111 == "Version":
            if s.get("version"):
                pairs.append((a1111, f"vsf {s['version']}"))
        elif s.get(key) is not None:
            pairs.append((a1111, s[key]))
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs))
    return "\n".join(lines)


def _convert(a1111: str, value: str, out: dict) -> None:
    """Store one A1111 pair under our key; unknown or unparsable pairs keep their A1111 name."""
    spec = next((k for k in _KEYS if k[0] == a1111), None)
    try:
        if spec is None:
            out[a1111] = value
        elif a1111 == "Size":
            width, height = value.lower().split("x")
            out["width"], out["height"] = int(width), int(height)
        elif spec[2] is list:
            out.setdefault(spec[1], []).append(value)
        elif a1111 == "Version":
            out["version"] = value.removeprefix("vsf ")
        else:
            out[spec[1]] = spec[2](value)
    except ValueError:
        out[a1111] = value


def parse_a1111(text: str) -> dict:
    """Read A1111/Forge `parameters` text back into settings keys (prompt, negative, steps, seed, width, ...)."""
    lines = text.replace("\r\n", "\n").rstrip().split("\n")
    params = ""
    # The last line holds the parameters only if it looks like them; otherwise it is still prompt text.
    if len(_PARAM.findall(lines[-1])) >= 3:
        params = lines.pop()
    prompt: list[str] = []
    negative: list[str] | None = None
    for line in lines:
        if negative is None and line.startswith(_NEGATIVE):
            negative = [line[len(_NEGATIVE):].removeprefix(" ")]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    out: dict = {"prompt": "\n".join(prompt)}
    if negative is not None:
        out["negative"] = "\n".join(negative)
    for key, value in _PARAM.findall(params):
        _convert(key.strip(), _unquote(value.strip()), out)
    if "method" in out and "compat" not in out:
        out["compat"] = "paper"  # written only when it differs from the default
    return out


def save_png(image, path: Path, settings: dict) -> None:
    """Save a PIL image as PNG with `parameters` (A1111 text) and `vsf` (full settings JSON) chunks, atomically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    # add_text falls back to an iTXt (UTF-8) chunk when the text is not Latin-1, e.g. "猫".
    info.add_text("parameters", a1111_parameters(settings))
    info.add_text("vsf", json.dumps(settings, sort_keys=True))
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"cannot read {path}: the JSON is not an object of settings")
    return data


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
MAX_TEXT_BYTES = 16 * 2**20  # per text chunk, after decompression; vsf's own chunks are a few kB


def png_text_chunks(path: Path) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG, read without decoding a single pixel.

    Chunks are walked from the signature to IEND, seeking past image data, so the cost is the same for a 32x32 and a
    20000x20000 image, and text written after the pixel data is found too. CRCs are not checked: a damaged text
    chunk shows up as damaged settings instead. Raises UsageError if the file is not a PNG or is cut short before
    any text was read; a file cut short later keeps the chunks read so far.
    """
    chunks: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                raise UsageError(f"cannot read {path}: not a PNG")
            while True:
                head = f.read(8)
                if len(head) < 8:
                    break  # cut short between chunks
                length, kind = int.from_bytes(head[:4], "big"), head[4:]
                if length > 2**31 - 1 or not kind.isalpha():
                    raise UsageError(f"cannot read {path}: damaged PNG (bad chunk header)")
                if kind == b"IEND":
                    return chunks
                if kind not in _TEXT_CHUNKS or length > MAX_TEXT_BYTES:
                    f.seek(length + 4, 1)  # data and CRC: pixels are never read
                    continue
                data = f.read(length)
                if len(data) < length:
                    break
                f.seek(4, 1)
                entry = _text_chunk(kind, data)
                if entry is not None:
                    chunks[entry[0]] = entry[1]  # the last of two same-named chunks wins, as in PIL
    except FileNotFoundError:
        raise UsageError(f"cannot read {path}: no such file") from None
    except PermissionError:
        raise UsageError(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    if not chunks:
        raise UsageError(f"cannot read {path}: damaged PNG (the file ends early)")
    return chunks


def _text_chunk(kind: bytes, data: bytes) -> tuple[str, str] | None:
    """(keyword, text) of one text chunk, or None when it cannot be decoded (it is skipped, as PIL skips it)."""
    import zlib

    keyword, sep, rest = data.partition(b"\0")
    if not sep or not keyword:
        return None
    try:
        if kind == b"tEXt":
            return keyword.decode("latin-1"), rest.decode("latin-1")
        if kind == b"zTXt":
            if rest[:1] != b"\0":  # 0 (zlib) is the only compression method PNG defines
                return None
            return keyword.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
        compressed, method, rest = rest[:1], rest[1:2], rest[2:]
        _language, _, rest = rest.partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        if compressed == b"\1":
            if method != b"\0":
                return None
            text = _inflate(text)
        return keyword.decode("latin-1"), text.decode("utf-8")
    except (zlib.error, UnicodeDecodeError, ValueError):
        return None


def _inflate(data: bytes) -> bytes:
    """zlib-decompress at most MAX_TEXT_BYTES, so a small chunk cannot expand into gigabytes."""
    import zlib

    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError("text chunk too large")
    return out


def _image_text(path: Path) -> dict[str, str]:
    """Text metadata of an image file without decoding its pixels: PNG chunks, else what PIL's header read gives."""
    try:
        with open(path, "rb") as f:
            is_png = f.read(8) == PNG_SIGNATURE
    except (FileNotFoundError, PermissionError, IsADirectoryError, OSError):
        is_png = True  # png_text_chunks says why in one line
    if is_png:
        return png_text_chunks(path)
    return _header_text(path)


def _header_text(path: Path) -> dict[str, str]:
    """String-valued `info` of a non-PNG image from PIL's header read (no pixels decoded, so no size limit)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return {k: v for k, v in im.info.items() if isinstance(v, str)}
    except Image.DecompressionBombError:
        return {}  # a huge non-PNG: PIL refuses even its header, and vsf writes no metadata into those formats
    except UnidentifiedImageError:
        raise UsageError(f"cannot read {path}: not an image") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UsageError(f"cannot read {path}: damaged image ({e})") from None


def read_metadata(path: Path) -> dict:
    """Settings stored in an image (our `vsf` JSON, else A1111 `parameters`), a video, or a `.json` sidecar."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_json(path)
    if path.suffix.lower() in VIDEO_SUFFIXES or path.is_dir():
        return _video_settings(path)
    chunks = _image_text(path)
    if "vsf" in chunks:
        try:
            data = json.loads(chunks["vsf"])
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            return data
        if "parameters" not in chunks:
            raise UsageError(f"cannot read {path}: its vsf metadata is damaged")
    if "parameters" in chunks:
        return parse_a1111(chunks["parameters"])
    raise UsageError(f"no vsf or A1111 metadata in {path}")


def _video_settings(path: Path) -> dict:
    """Settings stored with a video: the `.json` sidecar if present, else the mp4 `comment` tag.

    The import goes one way only, metadata -> video (where the file layout lives), and late, so that reading a PNG's
    settings never loads the video code.
    """
    from vsf_cli.render.video import mp4_comments, sidecar

    if sidecar(path).is_file():
        return read_json(sidecar(path))
    if path.suffix.lower() != ".mp4":
        raise UsageError(f"no settings for {path}: its sidecar {sidecar(path)} is missing")
    for text in mp4_comments(path):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            break
        if isinstance(data, dict):
            return data
    raise UsageError(f"no vsf settings in {path} (no sidecar, no comment tag)")
