"""Eval items from a batch run folder: file, sha256, prompt, negative, the two questions, setting label, seed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vsf_cli.errors import UsageError
from vsf_cli.negatives import label
from vsf_cli.render.images import sha256

# Settings that change from item to item by design, or only say where it ran; never part of a setting's label.
_PER_ITEM = {"prompt", "negative", "seed", "image", "image_sha256", "mask", "mask_sha256", "device", "dtype", "offload"}


def template_questions(prompt: str, negative: str) -> tuple[str, str]:
    """The fixed questions for items without NegGenBench ones (Q2 wording as the paper's eval_lambda.py)."""
    return (f'Does the image show the subject described as "{prompt}", whether or not it has {negative}?',
            f"Is the {negative} missing or not visible?")


@dataclass
class Item:
    """One image (or video) of a run, ready for a judge."""

    id: str
    run: Path
    file: str  # relative to the run folder
    sha256: str
    prompt: str
    negative: str
    seed: int
    method: str
    settings: dict
    meta: dict
    questions: tuple[str, str]
    setting: str = ""  # filled by label_settings
    params: dict = field(default_factory=dict)
    error: str | None = None  # why the item cannot be judged (its file changed or cannot be read); never asked

    @property
    def path(self) -> Path:
        return self.run / self.file

    @property
    def is_video(self) -> bool:
        from vsf_cli.render.metadata import VIDEO_SUFFIXES

        return self.file.lower().endswith(VIDEO_SUFFIXES)

    @property
    def pair(self) -> tuple:
        """What a baseline is matched on: identical prompt, negative and seed."""
        return (self.prompt, self.negative, self.seed)


def load(run_dir: Path, warn=lambda message: None) -> list[Item]:
    """Every done job of a run (all ranks) whose file is present, in job order; settings labelled.

    A file that no longer matches the sha256 its record holds, or that cannot be read, is an item with an error:
    counted as not judged, never sent to a judge.
    """
    from vsf_cli.batch.runner import output_state, read_manifests

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such folder")
    if not any(run_dir.glob("manifest*.jsonl")):
        raise UsageError(f"{run_dir} has no manifest*.jsonl; is it a `vsf batch` output folder?")
    items = []
    for record in sorted(read_manifests(run_dir, warn).values(), key=lambda r: r["index"]):
        state, sha = output_state(record, run_dir)
        if state not in ("done", "changed"):
            continue
        error = None
        if state == "changed":
            error = f"{record['file']} changed after it was rendered (it does not match its manifest record)"
        elif sha is None:  # a record from before outputs were hashed
            try:
                sha = sha256(run_dir / record["file"])
            except OSError as e:
                error = f"cannot read {record['file']}: {e.strerror or e}"
        s, meta = record["settings"], record.get("meta") or {}
        negative = label(s.get("negative"))  # several negatives are one "a, b" text to the judge
        q_pos, q_neg = template_questions(s["prompt"], negative)
        items.append(Item(
            id=record["id"], run=run_dir, file=record["file"], sha256=sha or "",
            prompt=s["prompt"], negative=negative, seed=record["seed"], method=s["method"], settings=s, meta=meta,
            questions=(meta.get("question_positive") or q_pos, meta.get("question_negative") or q_neg), error=error,
        ))
    if not items:
        raise UsageError(f"{run_dir} has no finished jobs yet (see `vsf batch status {run_dir}`)")
    label_settings(items)
    return items


def fmt_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else value if isinstance(value, str) else json.dumps(value)


def label_settings(items: list[Item]) -> None:
    """A setting is the method plus the parameters that vary among the run's items of that method.

    A sweep over methods gives `none`, `vsf`, `nag`; a sweep over scales gives `vsf scale=2`, `vsf scale=4`.
    """
    by_method: dict[str, list[Item]] = {}
    for item in items:
        by_method.setdefault(item.method, []).append(item)
    for method, group in by_method.items():
        keys = [k for k in group[0].settings if k not in _PER_ITEM and k != "method"
                and len({json.dumps(i.settings.get(k), sort_keys=True) for i in group}) > 1]
        for item in group:
            item.params = {k: item.settings.get(k) for k in keys}
            item.setting = " ".join([method, *(f"{k}={fmt_value(v)}" for k, v in item.params.items())])


def frames(path: Path, n: int) -> list:
    """n evenly spaced frames of a video as PIL images (first and last included when n > 1)."""
    from PIL import Image

    from vsf_cli.render.video import read_frames

    video = read_frames(path)  # every frame; videos of few-step models are short
    count = len(video)
    if count == 0:
        raise ValueError(f"{path} has no frames")
    picks = [round(i * (count - 1) / (n - 1)) for i in range(n)] if n > 1 else [count // 2]
    return [Image.fromarray(video[i]) for i in picks]
