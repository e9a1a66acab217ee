"""Judge a run's items (cached, concurrent, resumable), then write per-image results and the summary."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from vsf_cli.errors import UsageError, VsfError, describe
from vsf_cli.eval import judges, stats
from vsf_cli.eval.cache import Cache, cache_key
from vsf_cli.eval.items import Item, fmt_value

CACHE_FILE = "cache.sqlite"


def judge_items(items: list[Item], judge, cache: Cache, on_progress: Callable[[int, int], None] = lambda done, total: None) -> list[dict]:
    """One result row per item. Identical (image, questions) pairs are asked once; answers are cached as they come.

    Only the main thread touches the cache; the pool runs judge.ask. Errors are recorded in the rows, not cached:
    an item whose file changed or cannot be read gets its error, and the others go on.
    """
    keys = [f"error:{i.id}" if i.error else cache_key(i.sha256, i.questions, judges.identity(judge, i), judge.prompt_version)
            for i in items]
    answers: dict[str, dict] = {}
    cached: set[str] = set()
    pending: dict[str, Item] = {}
    errors: dict[str, str] = {key: item.error for key, item in zip(keys, items) if item.error}
    for key, item in zip(keys, items):
        if key in errors:
            continue
        answer = cache.get(key)
        if answer is not None:
            answers[key] = answer
            cached.add(key)
        else:
            pending.setdefault(key, item)
    unreachable_in_a_row, give_up = 0, max(4, 2 * judge.concurrency)
    on_progress(0, len(pending))
    pool = ThreadPoolExecutor(max_workers=max(1, judge.concurrency), thread_name_prefix="judge")
    try:
        # A bounded window of submissions: Ctrl-C or a dead server leaves little queued work behind.
        queue, running, finished = iter(pending.items()), {}, 0
        while True:
            for key, item in itertools.islice(queue, 2 * max(1, judge.concurrency) - len(running)):
                running[pool.submit(judge.ask, item)] = key
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            finished += len(done)
            fatal = None  # e.g. KeyboardInterrupt; the other answers of this round are stored first
            for future in done:
                key = running.pop(future)
                item = pending[key]
                try:
                    answer = future.result()
                except judges.JudgeError as e:
                    errors[key] = str(e)
                    unreachable_in_a_row = unreachable_in_a_row + 1 if isinstance(e, judges.JudgeUnreachable) else 0
                    if unreachable_in_a_row >= give_up:
                        fatal = VsfError(f"the judge stopped answering ({e}); answers so far are cached, rerun to resume")
                except (OSError, ValueError, SyntaxError, UsageError) as e:  # an image a judge could not read
                    errors[key] = f"cannot read {item.file}: {describe(e)}"
                except BaseException as e:  # noqa: BLE001 — re-raised below
                    fatal = fatal or e
                else:
                    unreachable_in_a_row = 0
                    answers[key] = answer
                    cache.put(key, item.sha256, item.questions, judges.identity(judge, item), judge.prompt_version, answer)
            if fatal is not None:
                raise fatal
            on_progress(finished, len(pending))
    finally:
        # On Ctrl-C or a fatal error, drop what has not started; requests in flight end at their timeout.
        pool.shutdown(wait=False, cancel_futures=True)
    return [_row(item, judge, answers.get(key), errors.get(key), key in cached) for key, item in zip(keys, items)]


def _row(item: Item, judge, answer: dict | None, error: str | None, cached: bool) -> dict:
    row = {"id": item.id, "file": item.file, "sha256": item.sha256, "setting": item.setting, "method": item.method,
           "params": item.params, "prompt": item.prompt, "negative": item.negative, "seed": item.seed,
           "questions": list(item.questions), "judge": judge.name, "judge_model": judge.model,
           "prompt_version": judge.prompt_version, "answer_1": None, "answer_2": None, "both": None,
           "quality": None, "reasoning": None, "error": error, "cached": cached}
    if answer is not None:
        row.update(answer, both=answer["answer_1"] and answer["answer_2"], error=None)
    return row


def pair_key(row: dict) -> tuple:
    """Baseline pairs share prompt, negative and seed."""
    return (row["prompt"], row["negative"], row["seed"])


def _groups(rows: list[dict], field: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row[field], []).append(row)
    return out


def select_baseline(rows: list[dict], spec: str) -> str:
    """The setting that `KEY=VALUE` (e.g. method=none, scale=2) picks among rows (or vars(item)); exactly one."""
    key, _, value = spec.partition("=")
    key, value = key.strip(), value.strip()
    picked = {r["setting"] for r in rows if fmt_value(r["params"].get(key, r.get(key))) == value}
    settings = sorted({r["setting"] for r in rows})
    if len(picked) != 1:
        raise UsageError(f"--baseline {spec} matches {len(picked)} settings; it must pick one of: {'; '.join(settings)}")
    return picked.pop()


def summarise(rows: list[dict], *, run: Path, judge, baseline_rows: list[dict] | None = None,
              baseline_label: str | None = None, same_run: bool = False) -> dict:
    """Rates with CIs per setting and per method; with a baseline, paired deltas for every other setting."""
    summary = {
        "run": str(run), "judge": judge.name, "judge_model": judge.model, "prompt_version": judge.prompt_version,
        "video_frames": judge.frames, "items": len(rows), "errors": sum(r["error"] is not None for r in rows),
        "bootstrap": {"resamples": stats.N_BOOT, "seed": stats.SEED, "level": 0.95},
        "settings": [{"setting": s, "method": g[0]["method"], "params": g[0]["params"], **stats.summarise(g)}
                     for s, g in _groups(rows, "setting").items()],
        "methods": [{"method": m, **stats.summarise(g)} for m, g in _groups(rows, "method").items()],
        "baseline": None, "deltas": [],
    }
    if baseline_rows is not None:
        summary["baseline"] = {"setting": baseline_label, **stats.summarise(baseline_rows)}
        summary["deltas"] = [{"setting": s, **stats.paired(g, baseline_rows, pair_key)}
                             for s, g in _groups(rows, "setting").items() if not (same_run and s == baseline_label)]
    return summary


def write(out_dir: Path, rows: list[dict], summary: dict) -> list[Path]:
    """results.jsonl (one line per item), summary.json and summary.md, each written atomically."""
    from vsf_cli.eval.report import table
    from vsf_cli.render.naming import atomic_write

    files = {"results.jsonl": "".join(json.dumps(r) + "\n" for r in rows),
             "summary.json": json.dumps(summary, indent=1) + "\n",
             "summary.md": table([summary]) + "\n"}
    paths = []
    for name, text in files.items():
        atomic_write(out_dir / name, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        paths.append(out_dir / name)
    return paths
