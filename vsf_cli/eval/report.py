"""Reports from eval results: the paper's Table 1 as markdown, a contact sheet PNG and a trade-off plot PNG."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from vsf_cli.errors import UsageError
from vsf_cli.eval.stats import METRICS
from vsf_cli.render.naming import atomic_write

CELL = 128  # contact-sheet image size; small images are scaled up with nearest neighbour so pixels stay sharp
CAPTION_W = 240
HEADER_H = 48
ANSWER_H = 18


def find(run_dir: Path, judge: str | None = None) -> Path:
    """The eval folder of a run (RUN/eval/<judge>/ holding summary.json); `judge` picks one when there are several."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such folder")
    found = sorted(p.parent for p in (run_dir / "eval").glob("*/summary.json"))
    if judge:
        found = [p for p in found if p.name == judge or p.name.startswith(judge + "-")]
    if not found:
        raise UsageError(f"{run_dir} has no eval results{f' from judge {judge}' if judge else ''}; run `vsf eval {run_dir}` first")
    if len(found) > 1:
        raise UsageError(f"{run_dir} has results from several judges ({', '.join(p.name for p in found)}); pick one with --judge")
    return found[0]


def load(run_dir: Path, judge: str | None = None) -> tuple[dict, list[dict]]:
    folder = find(run_dir, judge)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    summary["run"] = str(run_dir)  # where the images are now, should the folder have moved since the eval
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return summary, rows


def _labels(summaries: list[dict]) -> list[str]:
    """Row labels: the setting, prefixed with the run folder's name when the report spans several runs."""
    many = len(summaries) > 1
    return [f"{Path(s['run']).name}: {row['setting']}" if many else row["setting"] for s in summaries for row in s["settings"]]


def _ci(e: dict, delta: bool = False) -> str:
    """`mean [lo, hi]`; a paired delta is signed and carries its sign-test p."""
    if e.get("mean") is None:
        return "n/a"
    f = "+.3f" if delta else ".3f"
    text = f"{e['mean']:{f}} [{e['lo']:{f}}, {e['hi']:{f}}]"
    return f"{text} p={e['p']:.2g}" if delta else text


def table(summaries: list[dict]) -> str:
    """Markdown shaped like the paper's Table 1: one row per setting, positive / negative / both / quality."""
    judges = sorted({f"{s['judge']} ({s['judge_model']}, {s['prompt_version']})" for s in summaries})
    lines = [f"Judge: {'; '.join(judges)}. Mean with its 95% bootstrap CI; positive = the object is there (Q1), "
             "negative = the negative is absent (Q2), both = Q1 and Q2.", "",
             "| setting | positive | negative | both | quality | n |", "|---|---|---|---|---|---|"]
    settings = [row for s in summaries for row in s["settings"]]
    for label, row in zip(_labels(summaries), settings):
        n = f"{row['n']}" + (f" ({row['errors']} errors)" if row["errors"] else "")
        lines.append(f"| {label} | {' | '.join(_ci(row[m]) for m in METRICS)} | {n} |")
    for s in summaries:
        if not s.get("deltas"):
            continue
        whose = f"{Path(s['run']).name}: p" if len(summaries) > 1 else "P"
        lines += ["", f"{whose}aired against the baseline `{s['baseline']['setting']}` on identical (prompt, negative, seed); "
                  "mean difference [95% CI], exact two-sided sign test p (McNemar for the yes/no columns).", "",
                  "| setting | Δ positive | Δ negative | Δ both | Δ quality | pairs |", "|---|---|---|---|---|---|"]
        for d in s["deltas"]:
            cells = " | ".join(_ci(d[m], delta=True) for m in METRICS)
            lines.append(f"| {d['setting']} | {cells} | {d['pairs']} |")
    return "\n".join(lines)


def _font(size: int):
    """DejaVu Sans, which matplotlib ships, so captions look the same everywhere; else Pillow's own font."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=False), size)
    except Exception:  # noqa: BLE001 — any font is better than no sheet
        return ImageFont.load_default()


def _thumb(path: Path):
    from PIL import Image

    from vsf_cli.eval.items import frames
    from vsf_cli.render.metadata import VIDEO_SUFFIXES

    if path.suffix.lower() in VIDEO_SUFFIXES:
        im = frames(path, 1)[0]
    else:
        with Image.open(path) as f:
            im = f.convert("RGB")
    scale = CELL / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)


def _spread(keys: list, n: int) -> list:
    """n keys evenly spaced over the list, so a subset still shows the benchmark's variety."""
    if len(keys) <= n:
        return keys
    return [keys[round(i * (len(keys) - 1) / (n - 1))] for i in range(n)] if n > 1 else keys[:1]


def _missing_tile(reason: str, font):
    """A tile for an image that cannot be drawn: grey, crossed out, with the reason."""
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (CELL, CELL), (236, 236, 236))
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, CELL - 1, CELL - 1), outline=(190, 40, 30))
    draw.line((0, 0, CELL - 1, CELL - 1), fill=(215, 160, 155))
    draw.line((0, CELL - 1, CELL - 1, 0), fill=(215, 160, 155))
    draw.multiline_text((6, CELL // 2 - 12), "\n".join(textwrap.wrap(reason, 20)[:3]), fill=(150, 30, 20), font=font)
    return tile


def _why(e: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, FileNotFoundError):
        return "file missing"
    if isinstance(e, UnidentifiedImageError):
        return "not an image"
    if "truncated" in str(e):
        return "truncated image"
    return "unreadable image"


def contact_sheet(runs: list[tuple[dict, list[dict]]], path: Path, rows: int = 8,
                  missing: list[str] | None = None) -> tuple[int, int]:
    """Rows = (prompt, negative) pairs, columns = settings; each cell is the lowest seed's image and its answers.

    A file that cannot be read gets a crossed-out tile saying why, and its name is appended to `missing`.
    Returns (rows, columns) drawn.
    """
    from PIL import Image, ImageDraw

    labels = iter(_labels([s for s, _ in runs]))
    columns = []  # (label, {(prompt, negative): the result row of the lowest seed})
    for summary, results in runs:
        for setting in summary["settings"]:
            cells: dict[tuple, dict] = {}
            for r in sorted((r for r in results if r["setting"] == setting["setting"]), key=lambda r: r["seed"]):
                cells.setdefault((r["prompt"], r["negative"]), {**r, "run": summary["run"]})
            columns.append((next(labels), cells))
    keys = _spread(list(dict.fromkeys(k for _, cells in columns for k in cells)), rows)
    font, small = _font(12), _font(10)
    row_h = CELL + ANSWER_H + 8
    sheet = Image.new("RGB", (CAPTION_W + len(columns) * (CELL + 8) + 8, HEADER_H + len(keys) * row_h + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (label, _) in enumerate(columns):
        draw.multiline_text((CAPTION_W + c * (CELL + 8) + 4, 6), "\n".join(textwrap.wrap(label, 18)[:3]), fill="black", font=font)
    for r, key in enumerate(keys):
        y = HEADER_H + r * row_h
        prompt, negative = key
        caption = "\n".join(textwrap.wrap(prompt, 32)[:5] + [f"without: {negative}"])
        draw.multiline_text((8, y + 4), caption, fill="black", font=font)
        for c, (_, cells) in enumerate(columns):
            x = CAPTION_W + c * (CELL + 8) + 4
            cell = cells.get(key)
            if cell is None:
                continue
            try:
                thumb = _thumb(Path(cell["run"]) / cell["file"])
            except (OSError, ValueError, SyntaxError) as e:
                thumb = _missing_tile(_why(e), small)
                if missing is not None:
                    missing.append(f"{cell['file']} ({_why(e)})")
            sheet.paste(thumb, (x, y))
            if cell["error"] is not None:
                text, colour = "not judged", (150, 150, 150)
            else:
                yes = lambda v: "yes" if v else "no"  # noqa: E731
                quality = "" if cell["quality"] is None else f" · q {cell['quality']:.2f}".replace("0.", ".")
                text = f"pos {yes(cell['answer_1'])} · neg {yes(cell['answer_2'])}{quality}"
                colour = (20, 130, 40) if cell["both"] else (190, 40, 30)
            draw.text((x, y + CELL + 3), text, fill=colour, font=small)
    atomic_write(path, lambda tmp: sheet.save(tmp, optimize=True))
    return len(keys), len(columns)


def tradeoff(summaries: list[dict], path: Path) -> int:
    """The paper's Figure 2 view: negative score against positive score and against quality, a point per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [row for s in summaries for row in s["settings"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), dpi=100, sharey=True)
    for ax, x_metric, x_label in ((axes[0], "positive", "positive: object present (Q1)"),
                                  (axes[1], "quality", "quality (judge, 0-1)")):
        for label, row in zip(_labels(summaries), settings):
            x, y = row[x_metric], row["negative"]
            if x["mean"] is None or y["mean"] is None:
                continue
            ax.errorbar(x["mean"], y["mean"], xerr=[[x["mean"] - x["lo"]], [x["hi"] - x["mean"]]],
                        yerr=[[y["mean"] - y["lo"]], [y["hi"] - y["mean"]]], fmt="o", capsize=3, alpha=0.85, label=label)
            ax.annotate(label, (x["mean"], y["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(x_label)
        ax.margins(0.15)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("negative: negative absent (Q2)")
    axes[1].legend(fontsize=8, loc="best")  # the labels next to the points can overlap where settings tie
    fig.suptitle("negative adherence against positive adherence and quality (95% bootstrap CIs); up and right is better",
                 fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp))
    plt.close(fig)
    return len(settings)


def write(run_dirs: list[Path], out_dir: Path, judge: str | None = None, rows: int = 8,
          missing: list[str] | None = None) -> list[Path]:
    """table.md, contact_sheet.png and tradeoff.png for one or more evaluated runs.

    Images that cannot be read are drawn as marked tiles and named in `missing`; everything else is drawn.
    """
    runs = [load(d, judge) for d in run_dirs]
    summaries = [s for s, _ in runs]
    out_dir = Path(out_dir)
    text = table(summaries) + "\n"
    atomic_write(out_dir / "table.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    contact_sheet(runs, out_dir / "contact_sheet.png", rows, missing)
    tradeoff(summaries, out_dir / "tradeoff.png")
    return [out_dir / "table.md", out_dir / "contact_sheet.png", out_dir / "tradeoff.png"]


def not_judged(run_dirs: list[Path], judge: str | None = None) -> int:
    """How many result rows of the runs have an error (the eval could not judge them)."""
    return sum(r["error"] is not None for d in run_dirs for r in load(d, judge)[1])
