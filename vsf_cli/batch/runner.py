"""Run a planned batch: one model load per group, a manifest line per finished job, resume, failures, summary."""

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vsf_cli.batch import manifest
from vsf_cli.batch.manifest import manifest_path, output_state  # noqa: F401  (part of this module's API)
from vsf_cli.batch.plan import PlannedJob
from vsf_cli.errors import UsageError, VsfError, describe
from vsf_cli.generate import LOAD_KEYS
from vsf_cli.render.naming import TEMP_NAME

DISK_FULL = "disk_full"  # a failure's `reason` when the disk was full: a resume runs the job again by itself


def read_manifests(out_dir: Path, warn=lambda message: None) -> dict[str, dict]:
    """The merged view of every rank's manifest: job id -> its latest record (lines that do not parse warned)."""
    return manifest.read_all(out_dir, warn)


def is_done(record: dict | None, out_dir: Path) -> bool:
    """A done record whose file is on disk with the sha256 and size it was recorded with."""
    return output_state(record, out_dir)[0] == "done"


def _blocks(record: dict | None) -> bool:
    """A failure that stays failed until --retry-failed (a full disk does not: a resume retries it)."""
    return bool(record) and record["status"] == "failed" and record.get("reason") != DISK_FULL


def write_plan(out_dir: Path, source: str, jobs: list[PlannedJob]) -> None:
    """The full job list (all ranks), so `vsf batch status` can tell pending from done."""
    from vsf_cli.render.naming import atomic_write

    plan = {"source": source, "count": len(jobs),
            "jobs": [{"index": j.index, "id": j.id, "path": str(j.path), "file": str(j.path.relative_to(out_dir))}
                     for j in jobs]}
    atomic_write(out_dir / "plan.json", lambda tmp: tmp.write_text(json.dumps(plan), encoding="utf-8"))


def read_plan(out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    if not out_dir.exists():
        raise UsageError(f"{out_dir}: no such folder")
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir} is not a folder")
    plan_file = out_dir / "plan.json"
    if not plan_file.is_file():
        raise UsageError(f"{out_dir} has no plan.json; is it a vsf batch output folder?")
    try:
        return json.loads(plan_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VsfError(f"cannot read {plan_file}: {e}") from None


def unrecorded(out_dir: Path, plan: dict, done: set[str]) -> list[dict]:
    """Plan jobs not in `done` whose file is on disk and names the job: finished just before a crash cut its record.

    The next `vsf batch` run adopts them (records them as done without rendering them again).
    """
    return [job for job in plan["jobs"] if job["id"] not in done and "file" in job
            and manifest.carries_job(Path(out_dir) / job["file"], job["id"])]


def status(out_dir: Path, warn=lambda message: None) -> dict:
    """Counts of done, failed and pending jobs over all ranks, from what is on disk, plus the failures.

    Done: the file matches its record, or carries the job's id (`unrecorded`: a rerun records it). Foreign: a file
    at the job's path that is neither (it needs --overwrite); such a job counts as pending, or failed if it failed.
    """
    out_dir = Path(out_dir)
    plan = read_plan(out_dir)
    records = read_manifests(out_dir, warn)
    matching = {job["id"] for job in plan["jobs"] if output_state(records.get(job["id"]), out_dir)[0] == "done"}
    adoptable = {job["id"] for job in unrecorded(out_dir, plan, matching)}
    counts = Counter()
    failed, foreign = [], []
    for job in plan["jobs"]:
        record = records.get(job["id"])
        if job["id"] in matching or job["id"] in adoptable:
            state = "done"
        elif _blocks(record):
            state = "failed"
        else:  # never run, interrupted, a full disk, or done but its file is gone or changed: it runs again
            state = "pending"
        counts[state] += 1
        if state == "failed":
            failed.append({"index": job["index"], "id": job["id"], "error": record.get("error")})
        if state != "done" and "file" in job and (out_dir / job["file"]).exists():
            foreign.append({"index": job["index"], "id": job["id"], "file": job["file"]})
    return {"total": plan["count"], "done": counts["done"], "failed": counts["failed"],
            "pending": counts["pending"], "unrecorded": len(adoptable), "failures": failed, "foreign": foreign}


@dataclass
class Outcome:
    done: int = 0
    skipped: int = 0  # already done, adopted ones included
    failed: int = 0
    failed_before: int = 0
    adopted: int = 0


class RunStopped(VsfError):
    """The batch cannot go on (the disk is full, or the manifest cannot be written): summary, one line, exit 1."""

    def __init__(self, message: str, rendered: bool = False) -> None:
        super().__init__(message)
        self.rendered = rendered  # the job in progress left its output in place (only its record is missing)


class Runner:
    """Renders one rank's jobs, appending a line to its manifest after each job's file is in place."""

    def __init__(self, out_dir: Path, rank: int, world: int, *, offline: bool, console, quiet: bool) -> None:
        self.out_dir = Path(out_dir)
        self.manifest = manifest_path(self.out_dir, rank, world)
        self.records: dict[str, dict] = {}
        self.rank, self.offline, self.console, self.quiet = rank, offline, console, quiet

    def lock(self) -> manifest.ShardLock:
        """The shard's writer lock; `with runner.lock():` around select and run (ShardBusy, exit 2, if taken)."""
        return manifest.ShardLock(self.manifest, self.rank, self.out_dir)

    def select(self, jobs: list[PlannedJob], *, force: bool, retry_failed: bool,
               warn=lambda message: None) -> tuple[list[PlannedJob], Outcome]:
        """The jobs to run now. Call it holding the lock.

        Skipped: outputs that match their record, and outputs that carry their job's id but have no record (adopted:
        recorded now, not rendered again). Failed jobs rerun only with retry_failed, except after a full disk.
        """
        manifest.repair(self.manifest, warn)
        self._remove_partial_files(jobs)
        records = self.records = read_manifests(self.out_dir, warn)
        outcome, todo = Outcome(), []
        for job in jobs:
            record = records.get(job.id)
            if not force and output_state(record, self.out_dir)[0] == "done":
                outcome.skipped += 1
            elif not force and (meta := self._embedded(job)) is not None:
                self._record(job, {"status": "done", "seconds": meta.get("seconds"), "adopted": True,
                                   **self._digest(job)})
                outcome.skipped += 1
                outcome.adopted += 1
            elif not force and not retry_failed and _blocks(record):
                outcome.failed_before += 1
            else:
                todo.append(job)
        return todo, outcome

    def _remove_partial_files(self, jobs: list[PlannedJob]) -> None:
        """Temp files a killed process left next to this shard's outputs (atomic_write's `.NAME.HEX.partial.EXT`).

        Only this shard writes these names, and it holds the lock, so none of them is being written now."""
        names: dict[Path, set[str]] = {}
        for job in jobs:
            names.setdefault(job.path.parent, set()).update({job.path.name, job.path.with_suffix(".json").name})
        names.setdefault(self.manifest.parent, set())
        for folder, own in names.items():
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                match = TEMP_NAME.match(entry.name)
                repair = entry.name.startswith(f".{self.manifest.name}.") and entry.name.endswith(".repair")
                if (repair or (match and match[1] in own)) and entry.is_file(follow_symlinks=False):
                    Path(entry.path).unlink(missing_ok=True)

    def _embedded(self, job: PlannedJob) -> dict | None:
        """The metadata of the file at the job's path when it is intact and names this job, else None."""
        return manifest.embedded(job.path, job.id)

    def _ours(self, job: PlannedJob) -> bool:
        """Whether the file at the job's path is this job's output: it matches the job's record, or names the job."""
        record = self.records.get(job.id)
        if output_state(record, self.out_dir)[0] == "done" and self.out_dir / record["file"] == job.path:
            return True
        return self._embedded(job) is not None

    @staticmethod
    def _digest(job: PlannedJob) -> dict:
        manifest.make_durable(job.path)
        sha, size = manifest.digest(job.path)
        return {"sha256": sha, "size": size}

    def run(self, todo: list[PlannedJob], outcome: Outcome, *, fail_fast: bool, overwrite: bool) -> Outcome:
        """Render `todo`, updating `outcome` as it goes; RunStopped (after the job's record) on a full disk."""
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
                        outcome.failed += 1
                        progress.advance(overall)
                    if fail_fast:
                        return outcome
                    continue
                for job in group:
                    steps = progress.add_task(f"  #{job.index}", total=job.settings["steps"])
                    try:
                        ok = self._one(renderer, job, overwrite, on_step=lambda t=steps: progress.advance(t))
                    except RunStopped as e:
                        if e.rendered:
                            outcome.done += 1
                        else:
                            outcome.failed += 1
                        raise
                    finally:
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
            if job.path.exists() and not overwrite and not self._ours(job):
                raise VsfError(f"{job.path} exists and is not this job's output: it matches no record of the job "
                               "and does not carry its id (pass --overwrite to replace it)")
            # The job id goes into the file's metadata, so a file renamed into place just before a crash is adopted.
            record = renderer.render({**job.settings, "job_id": job.id}, job.path, on_step=on_step)
            result = {"status": "done", "seconds": record["seconds"], **self._digest(job)}
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one job's failure must not stop the batch; a full disk does, after its record
            if manifest.is_disk_full(e):
                self._disk_full(job, e)
            result = {"status": "failed", "error": describe(e)}
        self._record(job, result)
        return result["status"] == "done"

    def _disk_full(self, job: PlannedJob, e: BaseException) -> None:
        reason = getattr(e, "strerror", None) or "No space left on device"
        line = f"the disk is full ({reason}) under {self.out_dir}: job #{job.index} left no file"
        try:
            self._record(job, {"status": "failed", "error": f"disk full: {reason}", "reason": DISK_FULL})
        except RunStopped:
            raise RunStopped(f"{line}, and its failure could not be recorded either; free some space and rerun the "
                             "same command to resume") from None
        raise RunStopped(f"{line} and is recorded as failed; free some space and rerun the same command to resume")

    def _record(self, job: PlannedJob, result: dict) -> None:
        """Append the job's manifest line (after its file is in place) and report it when stderr is not a TTY."""
        entry = {"id": job.id, "index": job.index, "path": str(job.path),
                 "file": str(job.path.relative_to(self.out_dir)), "seed": job.settings["seed"],
                 "rank": self.rank, "time": time.time(), **result, "settings": job.settings, "meta": job.meta}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            manifest.append(self.manifest, entry)
        except OSError as e:
            done = result["status"] == "done"
            what = (f"the output of job #{job.index} is in place, but its record could not be written to "
                    f"{self.manifest}" if done else f"the failure of job #{job.index} could not be recorded")
            if manifest.is_disk_full(e):
                raise RunStopped(f"the disk is full ({e.strerror or e}): {what}; free some space and rerun the same "
                                 "command to resume" + (" (it records the output without rendering it again)"
                                                        if done else ""), rendered=done) from None
            raise RunStopped(f"cannot write the manifest ({e.strerror or e}): {what}", rendered=done) from None
        self.records[job.id] = entry
        if not self.quiet and not self.console.is_terminal:
            done = result["status"] == "done"
            if result.get("adopted"):
                detail = "adopted: rendered before an interruption, now recorded"
            else:
                detail = f"{result['seconds']:.1f}s" if done else result["error"]
            self.console.print(f"[{job.index}] {'wrote' if done else 'failed'} {job.path} ({detail})")
