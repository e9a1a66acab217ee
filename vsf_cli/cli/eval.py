"""`vsf eval RUN_DIR`: judge a batch's images (cached, resumable) and summarise adherence per setting."""

import json
import os
from pathlib import Path

import typer

from vsf_cli.cli import app
from vsf_cli.cli.common import console, errors_to_exit_codes, progress_bar, warn
from vsf_cli.errors import UsageError
from vsf_cli.toy import TOYS


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="A `vsf batch` output folder (holds manifest*.jsonl)."),
    judge: str = typer.Option(None, "--judge", "-j", help="openai (any OpenAI-compatible vision server) or toy (the toy models' exact detector). (default: toy when every image is from --model toy or toy-z, else openai)"),
    base_url: str = typer.Option(None, "--base-url", envvar="VSF_JUDGE_BASE_URL", show_envvar=True, help="The judge server, e.g. http://localhost:8000/v1 for vLLM. (default: api.openai.com)"),
    judge_model: str = typer.Option(None, "--judge-model", envvar="VSF_JUDGE_MODEL", show_envvar=True, help="The judge's model name, e.g. Qwen/Qwen2.5-VL-7B-Instruct."),
    baseline: str = typer.Option(None, "--baseline", help="Paired deltas against another run folder (one setting), or a setting of this run as KEY=VALUE, e.g. method=none."),
    frames: int = typer.Option(4, "--frames", min=1, max=32, help="Frames sampled evenly from each video for the judge."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=256, help="Requests in flight at once (openai judge)."),
    timeout: float = typer.Option(120.0, "--timeout", min=0.1, help="Seconds per request before it counts as failed."),
    retries: int = typer.Option(2, "--retries", min=0, max=10, help="Retries for an invalid answer, and for connection errors, 5xx and 429."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or table on stderr."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Ask a judge the paper's two questions (object present? negative absent?) and a 0-1 quality for every image.

    Answers are cached in RUN_DIR/eval/cache.sqlite, so a rerun asks nothing twice and an interrupted eval resumes.
    Writes RUN_DIR/eval/<judge>/results.jsonl, summary.json and summary.md. Exit 3 if some items could not be judged.
    """
    with errors_to_exit_codes(debug):
        if base_url is not None:
            _check_url(base_url)
        from vsf_cli.eval import items as eval_items
        from vsf_cli.eval import judges
        from vsf_cli.eval import run as eval_run
        from vsf_cli.eval.cache import Cache
        from vsf_cli.eval.report import table

        items = eval_items.load(run_dir, warn=warn)
        _warn_unrecorded(run_dir, items)
        name = judge or ("toy" if all(i.settings.get("model") in TOYS for i in items) else "openai")
        the_judge = judges.make(name, model=judge_model, base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY"),
                                timeout=timeout, retries=retries, concurrency=concurrency, frames=frames)
        base_items, base_label = _baseline(baseline, items, eval_items, eval_run) if baseline else (None, None)
        for message in the_judge.check(items):
            warn(message)

        def judge_run(path: Path, its: list) -> list[dict]:
            with Cache(path / "eval" / eval_run.CACHE_FILE) as cache:
                return _with_progress(path, lambda progress: eval_run.judge_items(its, the_judge, cache, progress), quiet)

        rows = judge_run(run_dir, items)
        if base_items:
            base_rows = judge_run(base_items[0].run, base_items)
        else:
            base_rows = [r for r in rows if r["setting"] == base_label] if base_label else None
        summary = eval_run.summarise(rows, run=run_dir, judge=the_judge, baseline_rows=base_rows,
                                     baseline_label=base_label, same_run=not base_items)
        paths = eval_run.write(run_dir / "eval" / judges.folder_name(the_judge), rows, summary)
        if as_json:
            typer.echo(json.dumps(summary))
        else:
            for path in paths:
                typer.echo(str(path))
        if not quiet:
            console.print(table([summary]), markup=False)
            if summary["errors"]:
                first = next(r for r in rows if r["error"])
                console.print(f"{summary['errors']} of {len(rows)} items could not be judged (first: {first['error']}); "
                              "rerun to retry them", markup=False)
        if summary["errors"]:
            raise typer.Exit(3)


def _check_url(url: str) -> None:
    """--base-url must be an http(s) URL with a host: a usage error (exit 2) before anything is read."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 — raises ValueError for a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        raise UsageError(f"--base-url {url!r} (or VSF_JUDGE_BASE_URL) is not an http(s) URL; give the server's "
                         "address, e.g. http://localhost:8000/v1")


def _warn_unrecorded(run_dir: Path, items: list) -> None:
    """Outputs on disk that a crash left without a record are not judged: say so, and how to record them."""
    from vsf_cli.batch import runner

    if not (run_dir / "plan.json").is_file():
        return
    try:
        found = runner.unrecorded(run_dir, runner.read_plan(run_dir), {i.id for i in items})
    except Exception:  # noqa: BLE001 — a hint only; the eval goes on without it
        return
    if found:
        warn(f"{len(found)} finished output{'s' if len(found) > 1 else ''} of {run_dir} (first: {found[0]['file']}) "
             f"{'are' if len(found) > 1 else 'is'} not in its manifest yet and not judged; rerun the same `vsf batch` "
             "command to record them, then eval again")


def _baseline(spec: str, items: list, eval_items, eval_run) -> tuple[list | None, str]:
    """(its items, label) for a baseline run folder with one setting; (None, label) for KEY=VALUE in this run."""
    if Path(spec).is_dir():
        base_items = eval_items.load(Path(spec))
        settings = sorted({i.setting for i in base_items})
        if len(settings) != 1:
            raise UsageError(f"--baseline {spec} has {len(settings)} settings ({'; '.join(settings)}); use a run with one")
        return base_items, f"{Path(spec).name}: {settings[0]}"
    if "=" not in spec:
        raise UsageError(f"--baseline {spec!r}: give a run folder, or a setting of this run as KEY=VALUE such as method=none")
    return None, eval_run.select_baseline([vars(i) for i in items], spec)


def _with_progress(run_dir: Path, work, quiet: bool):
    progress = progress_bar(quiet)
    with progress:
        task = progress.add_task(f"judging {run_dir}", total=None)
        return work(lambda done, total: progress.update(task, completed=done, total=total))
