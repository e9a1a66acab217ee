"""The batch manifest on disk: records that are whole or absent, one writer per shard, and outputs known by content.

Each record is one JSON line, written with a single `os.write` to a file opened for append and fsynced before its
job counts as done. A record cut by a crash or a full disk is moved to `<manifest>.corrupt` with a warning (by the
shard's writer; readers only warn), so nothing is dropped unseen and the next record starts on a fresh line.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from vsf_cli.errors import UsageError, VsfError

CORRUPT_SUFFIX = ".corrupt"
LOCK_SUFFIX = ".lock"
_RECORD_START = b'{"id": '  # how json.dumps begins every record; used to salvage a record glued onto a cut line
Warn = Callable[[str], None]


def manifest_path(out_dir: Path, rank: int, world: int) -> Path:
    return Path(out_dir) / ("manifest.jsonl" if world == 1 else f"manifest.rank{rank}.jsonl")


def manifests(out_dir: Path) -> list[Path]:
    """Every rank's manifest in a folder (not the .lock and .corrupt files beside them)."""
    return sorted(Path(out_dir).glob("manifest*.jsonl"))


# --- reading ----------------------------------------------------------------------------------------------------


def _record(raw: bytes) -> dict | None:
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("id"), str) and isinstance(record.get("status"), str)
    return record if ok else None


def parse(data: bytes) -> tuple[list[tuple[bytes, dict]], list[tuple[int, bytes]]]:
    """(good lines with their records, bad lines with their 1-based line numbers).

    A bad line that ends in a whole record (an old vsf appended one onto a cut line) gives that record back; only
    the cut part before it is bad.
    """
    good, bad = [], []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        record = _record(raw)
        if record is None:
            start = raw.find(_RECORD_START, 1)
            while start > 0 and (record := _record(raw[start:])) is None:
                start = raw.find(_RECORD_START, start + 1)
            if record is not None:
                bad.append((number, raw[:start]))
                raw = raw[start:]
            else:
                bad.append((number, raw))
                continue
        good.append((raw, record))
    return good, bad


def _describe_bad(path: Path, bad: list[tuple[int, bytes]], action: str) -> str:
    lines = ", ".join(str(n) for n, _ in bad[:5]) + (" ..." if len(bad) > 5 else "")
    return (f"{path}: {len(bad)} record{'s' if len(bad) > 1 else ''} that do{'es' if len(bad) == 1 else ''} not parse "
            f"(line {lines}; cut by a crash or a full disk?) {action}")


def read(path: Path, warn: Warn = lambda message: None) -> list[dict]:
    """The records of one manifest, in order; lines that do not parse are skipped with a warning (left in place)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    good, bad = parse(data)
    if bad:
        warn(_describe_bad(path, bad, "ignored; the next `vsf batch` run on this shard moves them to "
                                      f"{Path(path).name}{CORRUPT_SUFFIX}"))
    return [record for _, record in good]


def read_all(out_dir: Path, warn: Warn = lambda message: None) -> dict[str, dict]:
    """The merged view of every rank's manifest: job id -> its latest record."""
    latest: dict[str, dict] = {}
    for path in manifests(out_dir):
        for record in read(path, warn):
            latest[record["id"]] = record
    return latest


# --- writing ----------------------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def repair(path: Path, warn: Warn = lambda message: None) -> None:
    """Before a writer appends: move lines that do not parse to `<manifest>.corrupt` and end the file in a newline.

    Call it holding the shard's lock. The good lines are kept byte for byte; the manifest is replaced atomically.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    good, bad = parse(data)
    if not bad and (not data or data.endswith(b"\n")):
        return
    if bad:
        corrupt = path.with_name(path.name + CORRUPT_SUFFIX)
        with open(corrupt, "ab") as f:
            f.write(b"".join(raw + b"\n" for _, raw in bad))
            f.flush()
            os.fsync(f.fileno())
        warn(_describe_bad(path, bad, f"moved to {corrupt.name}; their jobs are checked again"))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.repair")
    try:
        with open(tmp, "wb") as f:
            f.write(b"".join(raw + b"\n" for raw, _ in good))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write(fd: int, data: bytes) -> int:
    """The one write of a record (a seam for fault-injection tests)."""
    return os.write(fd, data)


def append(path: Path, entry: dict) -> None:
    """Append one record as one line: whole or absent. On any failure the file is cut back to where it was."""
    line = (json.dumps(entry) + "\n").encode()
    path = Path(path)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            written = _write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, f"No space left on device (wrote {written} of {len(line)} bytes)")
            os.fsync(fd)
        except BaseException:
            try:  # only the shard's writer appends (it holds the lock), so nothing else can be after `start`
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


# --- outputs ----------------------------------------------------------------------------------------------------


def digest(path: Path) -> tuple[str, int]:
    """(sha256, size) of a file."""
    from vsf_cli.render.images import sha256

    return sha256(path), Path(path).stat().st_size


def make_durable(path: Path) -> None:
    """fsync a file and its folder, so a record never outlives the file it describes (after a power cut too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(Path(path).parent)


def output_state(record: dict | None, out_dir: Path) -> tuple[str, str | None]:
    """(state, sha256) of a job's output against its latest record.

    States: `done` (a done record and the file matches its sha256 and size; records older than that check only
    need the file), `missing` (a done record, no file), `changed` (a done record, the file differs) and `none`
    (no done record).
    """
    if not record or record.get("status") != "done":
        return "none", None
    path = Path(out_dir) / record["file"]
    if not path.is_file():
        return "missing", None
    if "sha256" not in record:  # written before outputs were hashed
        return "done", None
    try:
        sha, size = digest(path)
    except OSError:
        return "changed", None
    if size != record.get("size") or sha != record["sha256"]:
        return "changed", sha
    return "done", sha


def embedded(path: Path, job_id: str) -> dict | None:
    """The metadata of a complete, intact vsf output that names this batch job (so it can be adopted), else None.

    Intact: a PNG passes Pillow's verify (every chunk's CRC, through IEND) and decodes; a video decodes.
    """
    from vsf_cli.render.metadata import VIDEO_SUFFIXES, read_metadata

    path = Path(path)
    if not path.is_file():
        return None
    try:
        meta = read_metadata(path)  # decodes an image fully
        if meta.get("job_id") != job_id:
            return None
        if path.suffix.lower() in VIDEO_SUFFIXES:
            from vsf_cli.render.video import read_frames

            if len(read_frames(path)) == 0:
                return None
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.verify()
    except Exception:  # noqa: BLE001 — damaged, truncated or foreign: not this job's
        return None
    return meta


def carries_job(path: Path, job_id: str) -> bool:
    return embedded(path, job_id) is not None


# --- one writer per shard ---------------------------------------------------------------------------------------


class ShardBusy(UsageError):
    """Another process holds the shard's lock: exit 2."""


class ShardLock:
    """An exclusive, non-blocking `flock` on `<manifest>.lock`, held while a process renders the shard.

    The lock file holds the owner's pid (and host). A dead owner's lock is released by the kernel, so a stale file
    never blocks. The file is never deleted: another process may already have it open.
    """

    def __init__(self, manifest: Path, rank: int, out_dir: Path) -> None:
        self.path = Path(manifest).with_name(Path(manifest).name + LOCK_SUFFIX)
        self.rank, self.out_dir, self.fd = rank, out_dir, None

    def acquire(self) -> ShardLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise VsfError(f"cannot lock {self.path}: {e.strerror or e}") from None
            raise ShardBusy(f"shard {self.rank} of {self.out_dir} is being rendered by {self._holder()}") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def _holder(self) -> str:
        for _ in range(20):  # the owner writes its pid just after it takes the lock
            try:
                pid, _, host = self.path.read_text(encoding="utf-8").strip().partition(" ")
            except OSError:
                pid, host = "", ""
            if pid.isdigit():
                return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
            time.sleep(0.05)
        return "another process"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None

    def __enter__(self) -> ShardLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC or EDQUOT anywhere in the exception's chain (ffmpeg and PIL sometimes wrap it)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False
