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
        lines.append(f"{_NEGATIVE} {s['negative']}")
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


def _image_text(path: Path) -> dict[str, str]:
    from vsf_cli.render.images import open_image

    # Fully loaded, so text chunks written after the pixel data are in `info` too.
    return {k: v for k, v in open_image(path).info.items() if isinstance(v, str)}


def read_metadata(path: Path) -> dict:
    """Settings stored in an image (our `vsf` JSON, else A1111 `parameters`), a video, or a `.json` sidecar."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_json(path)
    if path.suffix.lower() in VIDEO_SUFFIXES or path.is_dir():
        from vsf_cli.render.video import read_video_metadata

        return read_video_metadata(path)
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
