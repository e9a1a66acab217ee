"""Video files: H.264 mp4 through imageio-ffmpeg's bundled ffmpeg, GIF/WebP/PNG frames, settings in tag and sidecar."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np

from vsf_cli.errors import UsageError, VsfError
from vsf_cli.render.naming import atomic_write

FORMATS = {"mp4": ".mp4", "gif": ".gif", "webp": ".webp", "frames": ""}  # frames: a folder of numbered PNGs
MP4_CRF = 18  # x264 quality: visually lossless for generated video, about a tenth of the size of crf 0


def output_path(path: Path, fmt: str) -> Path:
    """The path a format writes to: the template's path with the format's extension (none for a frames folder)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown video format {fmt!r}; use {', '.join(FORMATS)}")
    return Path(path).with_suffix(FORMATS[fmt])


def sidecar(path: Path) -> Path:
    """The settings file next to a video: `clip.mp4` -> `clip.json`, a frames folder `clip` -> `clip.json`.

    A frames folder keeps its whole name, dots included: `wan-1.3b_7` -> `wan-1.3b_7.json`, not `wan-1.json`.
    """
    path = Path(path)
    if path.suffix.lower() in {ext for ext in FORMATS.values() if ext}:
        return path.with_suffix(".json")
    return path.with_name(path.name + ".json")


def save_video(frames: np.ndarray, path: Path, fps: int, settings: dict) -> None:
    """Write uint8 frames to `path` in the format its extension names (none: PNG frames), and the settings to the
    sidecar; both atomically."""
    path = Path(path)
    fmt = next((name for name, ext in FORMATS.items() if ext == path.suffix.lower()), None)
    if fmt is None:
        raise UsageError(f"{path}: unknown video extension; use .mp4, .gif, .webp, or none for a folder of PNG frames")
    text = json.dumps(settings, sort_keys=True)
    if fmt == "frames":
        _replace_folder(path, lambda tmp: _write_frames(frames, tmp))
    else:
        write = _write_mp4 if fmt == "mp4" else _write_animated
        atomic_write(path, lambda tmp: write(frames, tmp, fps, text))
    atomic_write(sidecar(path), lambda tmp: tmp.write_text(json.dumps(settings, indent=1, sort_keys=True), encoding="utf-8"))


def _write_mp4(frames: np.ndarray, tmp: Path, fps: int, text: str) -> None:
    import imageio_ffmpeg

    height, width = frames.shape[1:3]
    # The settings also go in the mp4 `comment` tag, so a video that lost its sidecar still says how it was made.
    writer = imageio_ffmpeg.write_frames(
        str(tmp), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None, macro_block_size=1,
        ffmpeg_log_level="error", output_params=["-crf", str(MP4_CRF), "-metadata", f"comment={text}"],
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def _write_animated(frames: np.ndarray, tmp: Path, fps: int, text: str) -> None:
    """GIF or WebP, by the file's extension; both loop forever."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    extra = {"comment": text.encode()} if tmp.suffix.lower() == ".gif" else {"quality": 90}
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, **extra)


def _write_frames(frames: np.ndarray, folder: Path) -> None:
    from PIL import Image

    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")


def _replace_folder(path: Path, write) -> None:
    """Fill a hidden temp folder, then swap it in for `path` (an existing one is removed after the swap)."""
    import secrets
    import shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
    tmp.mkdir()
    try:
        write(tmp)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_frames(path: Path) -> np.ndarray:
    """All frames of a video file (mp4, gif, webp) or PNG-frames folder as (frames, height, width, 3) uint8."""
    from PIL import Image, ImageSequence

    path = Path(path)
    if path.is_dir():
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(path.glob("*.png"))])
    if path.suffix.lower() == ".mp4":
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path))
        width, height = next(reader)["size"]
        return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])
    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


def mp4_comments(path: Path) -> list[str]:
    """The `comment` tags of an mp4 (vsf writes its settings JSON into one), unescaped, in the order ffmpeg lists them.

    Reading settings out of them is `render.metadata.read_metadata`'s job; this module knows containers, not settings.
    """
    import imageio_ffmpeg

    try:
        dump = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                              capture_output=True, check=True, timeout=60).stdout.decode("utf-8", "replace")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        raise VsfError(f"cannot read the tags of {path}: {e}") from None
    # ffmetadata escapes '=', ';', '#', '\' and newlines with a backslash.
    return [re.sub(r"\\(.)", r"\1", line[len("comment="):], flags=re.S)
            for line in dump.splitlines() if line.startswith("comment=")]
