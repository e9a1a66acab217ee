"""Run a planned batch: one model load per group, a manifest line per finished job, resume, failures, summary."""

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vsf_cli.batch.plan import PlannedJob
from vsf_cli.errors import VsfError, describe
from vsf_cli.generate import LOAD_KEYS


def manifest_path(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / ("manifest.jsonl" if world == 1 else f"manifest.rank{rank}.jsonl")


def read_manifests(out_dir: Path) -> dict[str, dict]:
    """The merged view of every rank's manifest: job id -> its latest record."""
    latest: dict[str, dict] = {}
    for path in sorted(Path(out_dir).glob("manifest*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write; that job simply runs again
            latest[record["id"]] = record
    return latest


def is_done(record: dict | None, out_dir: Path) -> bool:
    return bool(record) and record["status"] == "done" and (Path(out_dir) / record["file"]).is_file()


def write_plan(out_dir: Path, source: str, jobs: list[PlannedJob]) -> None:
    """The full job list (all ranks), so `vsf batch status` can tell pending from done."""
    from vsf_cli.render.naming import atomic_write

    plan = {"source": source, "count": len(jobs),
            "jobs": [{"index": j.index, "id": j.id, "path": str(j.path)} for j in jobs]}
    atomic_write(out_dir / "plan.json", lambda tmp: tmp.write_text(json.dumps(plan), encoding="utf-8"))


def status(out_dir: Path) -> dict:
    """Counts of done, failed and pending jobs over all ranks, plus the failures."""
    plan_file = Path(out_dir) / "plan.json"
    if not plan_file.is_file():
        raise VsfError(f"{out_dir} has no plan.json; is it a vsf batch output folder?")
    plan = json.loads(plan_file.read_text(encoding="utf-8"))
    records = read_manifests(out_dir)
    counts = Counter()
    failed = []
    for job in plan["jobs"]:
        record = records.get(job["id"])
        if is_done(record, out_dir):
            state = "done"
        elif record and record["status"] == "failed":
            state = "failed"
        else:  # never run, interrupted, or done but its file is gone: it runs again
            state = "pending"
        counts[state] += 1
        if state == "failed":
            failed.append({"index": job["index"], "id": job["id"], "error": record.get("error")})
    return {"total": plan["count"], "done": counts["done"], "failed": counts["failed"],
            "pending": counts["pending"], "failures": failed}


@dataclass
class Outcome:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failed_before: int = 0


class Runner:
    """Renders one rank's jobs, appending a line to its manifest after each job's file is in place."""

    def __init__(self, out_dir: Path, rank: int, world: int, *, offline: bool, console, quiet: bool) -> None:
        self.manifest = manifest_path(out_dir, rank, world)
        self.records: dict[str, dict] = {}
        self.rank, self.offline, self.console, self.quiet = rank, offline, console, quiet

    def select(self, jobs: list[PlannedJob], *, force: bool, retry_failed: bool) -> tuple[list[PlannedJob], Outcome]:
        """The jobs to run now; done jobs (file present) are skipped, failed ones only rerun with retry_failed."""
        records = self.records = read_manifests(self.manifest.parent)
        outcome, todo = Outcome(), []
        for job in jobs:
            record = records.get(job.id)
            if not force and is_done(record, self.manifest.parent):
                outcome.skipped += 1
            elif not force and not retry_failed and record and record["status"] == "failed":
                outcome.failed_before += 1
            else:
                todo.append(job)
        return todo, outcome

    def run(self, todo: list[PlannedJob], outcome: Outcome, *, fail_fast: bool, overwrite: bool) -> Outcome:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from vsf_cli.generate import Renderer

        # One model load per group of jobs that share the load settings, in file order within a group.
        groups: dict[tuple, list[PlannedJob]] = {}
        for job in todo:
            groups.setdefault(tuple(json.dumps(job.settings[k]) for k in LOAD_KEYS), []).append(job)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=self.console, transient=True, disable=self.quiet or not self.console.is_terminal)
        with progress:
            overall = progress.add_task("jobs", total=len(todo))
            for group in groups.values():
                if not self.quiet:
                    self.console.print(f"loading {group[0].settings['model']}")
                try:
                    renderer = Renderer(group[0].settings, offline=self.offline)
                except Exception as e:  # a missing or gated model fails its jobs, not the other models'
                    for job in group:
                        self._record(job, {"status": "failed", "error": describe(e)})
                        progress.advance(overall)
                    outcome.failed += len(group)
                    if fail_fast:
                        return outcome
                    continue
                for job in group:
                    steps = progress.add_task(f"  #{job.index}", total=job.settings["steps"])
                    ok = self._one(renderer, job, overwrite, on_step=lambda t=steps: progress.advance(t))
                    progress.remove_task(steps)
                    progress.advance(overall)
                    if ok:
                        outcome.done += 1
                    else:
                        outcome.failed += 1
                        if fail_fast:
                            return outcome
        return outcome

    def _one(self, renderer, job: PlannedJob, overwrite: bool, on_step) -> bool:
        try:
            own = self.records.get(job.id, {}).get("path") == str(job.path)  # a forced redo replaces its own file
            if job.path.exists() and not (overwrite or own):
                raise VsfError(f"{job.path} exists and is not this job's (pass --overwrite to replace it)")
            record = renderer.render(job.settings, job.path, on_step=on_step)
            result = {"status": "done", "seconds": record["seconds"]}
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one job's failure must not stop the batch
            result = {"status": "failed", "error": describe(e)}
        self._record(job, result)
        return result["status"] == "done"

    def _record(self, job: PlannedJob, result: dict) -> None:
        """Append the job's manifest line (after its file is in place) and report it when stderr is not a TTY."""
        entry = {"id": job.id, "index": job.index, "path": str(job.path),
                 "file": str(job.path.relative_to(self.manifest.parent)), "seed": job.settings["seed"],
                 "rank": self.rank, "time": time.time(), **result, "settings": job.settings, "meta": job.meta}
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        with open(self.manifest, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if not self.quiet and not self.console.is_terminal:
            done = result["status"] == "done"
            detail = f"{result['seconds']:.1f}s" if done else result["error"]
            self.console.print(f"[{job.index}] {'wrote' if done else 'failed'} {job.path} ({detail})")
