"""Fault injection for `vsf batch` (issue 16): cut records, a full disk, two writers, changed outputs, bad images for
eval and report, unbounded job files, and a randomized kill -9 soak.

Every test checks the same things: no record is lost (each job whose output is on disk is done in the manifest or
adopted by the next run), nothing is rendered twice, and `vsf batch status` and `vsf eval` count what is on disk.
The counts of faults injected, records lost and duplicates are kept in FAULTS and printed at the end (`-s`).
"""

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from vsf_cli.batch import manifest, plan, runner, spec
from vsf_cli.cli import app

cli = CliRunner()
FAULTS = Counter()  # faults injected, records lost, duplicates: the numbers for the note
JOB = {"prompt": "a red house", "neg": "roof", "meta": {"expect": {"object": "house", "negative": "roof"}}}
REFERENCE_JOBS = 16
KILLS = 12  # the soak's kill -9s: bounded, so the file stays near a minute on a shared two-core machine


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here, as in the subprocesses (OMP_NUM_THREADS=1): the toy's pixels depend on the thread
    count, and on a shared CPU one thread is also the fastest."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    print(f"\nfault injection: {dict(FAULTS)}")


@pytest.fixture
def fast_tmp(tmp_path):
    """A folder in /dev/shm when there is one (fsync is free there), else tmp_path."""
    if not Path("/dev/shm").is_dir():
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="vsf-faults-", dir="/dev/shm"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def job_file(folder: Path, seeds: int, **extra) -> Path:
    path = folder / f"jobs{seeds}.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"model": "toy"}, "seeds": seeds, "jobs": [JOB], **extra}))
    return path


def batch(*args, env=None):
    return cli.invoke(app, ["batch", *map(str, args)], env=env)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of REFERENCE_JOBS jobs: file name -> pixels. Smaller runs are its first jobs."""
    folder = tmp_path_factory.mktemp("reference")
    result = batch(job_file(folder, REFERENCE_JOBS), "-o", folder / "run", "-q")
    assert result.exit_code == 0, result.output
    return {p.name: pixels(p) for p in sorted((folder / "run").glob("*.png"))}


def audit(out: Path, reference: dict, expected: int) -> dict:
    """Check a finished run against the reference and count what the issue asks for."""
    lines = [line for m in manifest.manifests(out) for line in m.read_bytes().split(b"\n") if line]
    records = [json.loads(line) for line in lines]  # every line parses: nothing cut is left in a manifest
    for m in manifest.manifests(out):
        assert m.read_bytes().endswith(b"\n")
    done = Counter(r["id"] for r in records if r["status"] == "done")
    files = sorted(p.name for p in out.glob("*.png"))
    assert not [p for p in out.iterdir() if "partial" in p.name or p.name.startswith(".")], "a partial file is left"
    lost = [f for f in files if f.rsplit("_", 1)[1].removesuffix(".png") not in done]
    duplicates = sum(n - 1 for n in done.values() if n > 1)
    FAULTS["records lost"] += len(lost)
    FAULTS["duplicates"] += duplicates
    assert not lost and not duplicates
    assert len(files) == expected and files == sorted(reference)[:expected]
    for name in files:
        assert np.array_equal(pixels(out / name), reference[name]), f"{name} differs from an uninterrupted run"
    counts = runner.status(out)
    assert (counts["done"], counts["failed"], counts["pending"], counts["foreign"]) == (expected, 0, 0, [])
    return counts


# --- a cut last record ------------------------------------------------------------------------------------------


def test_a_last_record_cut_at_every_byte_offset_loses_nothing(fast_tmp, reference):
    out = fast_tmp / "run"
    jobs_yaml = job_file(fast_tmp, 4)
    assert batch(jobs_yaml, "-o", out, "-q").exit_code == 0
    path = manifest.manifest_path(out, 0, 1)
    data = path.read_bytes()
    start = data.rindex(b"\n", 0, len(data) - 1) + 1  # where the last record begins
    last_id = json.loads(data[start:])["id"]
    jobs = plan.expand(spec.load(jobs_yaml), preset={}, env={}, flags={}, out_dir=out)
    for cut in range(start, len(data) + 1):
        path.write_bytes(data[:cut])
        path.with_name(path.name + manifest.CORRUPT_SUFFIX).unlink(missing_ok=True)
        before = runner.status(out)  # a reader, before any repair: the output is on disk, so it is done
        assert (before["done"], before["failed"], before["pending"]) == (4, 0, 0), cut
        work = runner.Runner(out, 0, 1, offline=True, console=None, quiet=True)
        warned = []
        with work.lock():
            todo, outcome = work.select(jobs, force=False, retry_failed=False, warn=warned.append)
        FAULTS["faults injected"] += 1
        assert todo == [] and outcome.skipped == 4, cut  # nothing rendered again: matched or adopted
        whole = cut in (len(data), len(data) - 1)  # all of it, or all but its newline: the record parses
        assert outcome.adopted == (0 if whole else 1), cut
        corrupt = path.with_name(path.name + manifest.CORRUPT_SUFFIX)
        if whole or cut == start:
            assert not corrupt.exists() and not warned
        else:  # the cut part is kept aside, with a warning, never silently dropped
            assert corrupt.read_bytes() == data[start:cut] + b"\n" and "moved to manifest.jsonl.corrupt" in warned[0]
        repaired = path.read_bytes()
        assert repaired.startswith(data[:start]) and repaired.endswith(b"\n")  # the other records, byte for byte
        records = [json.loads(line) for line in repaired.splitlines()]
        assert [r["id"] for r in records] == [j.id for j in jobs] and records[-1]["id"] == last_id
        assert records[-1].get("adopted", False) is not whole
    audit(out, reference, 4)


def test_a_cut_record_through_the_cli_warns_and_the_next_record_starts_on_a_fresh_line(fast_tmp, reference):
    out = fast_tmp / "run"
    jobs_yaml = job_file(fast_tmp, 4)
    assert batch(job_file(fast_tmp, 3), "-o", out, "-q").exit_code == 0
    path = out / "manifest.jsonl"
    path.write_bytes(path.read_bytes()[:-100])  # job 2's record is cut; its image is fine
    FAULTS["faults injected"] += 1
    status = cli.invoke(app, ["batch", "status", str(out)])
    assert status.exit_code == 0 and status.stdout.startswith("3/3 done, 0 failed, 0 pending\n  1 finished before")
    assert "1 record that does not parse (line 3" in status.stderr
    evaluated = cli.invoke(app, ["eval", str(out), "--json", "-q"])  # judges what is recorded, names what is not
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout)["items"] == 2, evaluated.output
    assert "1 finished output of" in evaluated.stderr and "is not in its manifest yet and not judged" in evaluated.stderr
    result = batch(jobs_yaml, "-o", out, "--json")  # one more job too: it must land on its own line
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"done": 1, "skipped": 3, "failed": 0, "failed_before": 0, "out": str(out)}
    assert "moved to manifest.jsonl.corrupt" in result.stderr and "adopted" in result.stderr
    audit(out, reference, 4)


def test_a_record_an_old_vsf_glued_onto_a_cut_line_is_salvaged():
    first = json.dumps({"id": "a", "status": "done", "file": "a.png"}).encode()
    second = json.dumps({"id": "b", "status": "done", "file": "b.png"}).encode()
    good, bad = manifest.parse(first[:20] + second + b"\n" + first + b"\n")
    assert [r["id"] for _, r in good] == ["b", "a"] and bad == [(1, first[:20])]


# --- a full disk ------------------------------------------------------------------------------------------------


def _enospc(*args):
    return OSError(errno.ENOSPC, "No space left on device", *args)


def test_a_full_disk_while_an_image_is_written_stops_cleanly_and_resumes(fast_tmp, reference, monkeypatch):
    from PIL import Image as PILImage

    real_save = PILImage.Image.save

    def full_at_job_2(self, fp, *args, **kwargs):
        if "00002_" in str(fp):  # the temp file of job 2: half of it is written, then the disk is full
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n half an image")
            raise _enospc()
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", full_at_job_2)
    out, jobs_yaml = fast_tmp / "run", job_file(fast_tmp, 4)
    result = batch(jobs_yaml, "-o", out)
    FAULTS["faults injected"] += 1
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == (f"error: the disk is full (No space left on device) under {out}: job #2 "
                                              "left no file and is recorded as failed; free some space and rerun the "
                                              "same command to resume")
    assert "rendered" in result.stderr and "│ 2 " in result.stderr  # the summary: 2 rendered before the disk filled
    assert sorted(p.name for p in out.iterdir()) == sorted([*list(reference)[:2], "manifest.jsonl",
                                                            "manifest.jsonl.lock", "plan.json"])  # no partial file
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["index"], r["status"], r.get("reason")) for r in records] == [(0, "done", None), (1, "done", None),
                                                                             (2, "failed", "disk_full")]
    counts = runner.status(out)
    assert (counts["done"], counts["failed"], counts["pending"]) == (2, 0, 2)  # the next run retries job 2 itself
    monkeypatch.setattr(PILImage.Image, "save", real_save)
    resumed = batch(jobs_yaml, "-o", out, "--json", "-q")
    assert resumed.exit_code == 0 and json.loads(resumed.stdout)["done"] == 2, resumed.output
    audit(out, reference, 4)


def test_a_full_disk_while_a_record_is_written_cuts_it_back_and_the_rerun_adopts(fast_tmp, reference, monkeypatch):
    from vsf_cli.generate import Renderer

    real_write, real_render, appended, renders = manifest._write, Renderer.render, [], []

    def full_at_third_record(fd, data):
        appended.append(data)
        if len(appended) == 3:  # half the line reaches the disk, then it is full
            os.write(fd, data[: len(data) // 2])
            raise _enospc()
        return real_write(fd, data)

    def counted(self, settings, path, on_step=lambda: None):
        renders.append(settings["job_id"])
        return real_render(self, settings, path, on_step)

    monkeypatch.setattr(manifest, "_write", full_at_third_record)
    monkeypatch.setattr(Renderer, "render", counted)
    out, jobs_yaml = fast_tmp / "run", job_file(fast_tmp, 4)
    result = batch(jobs_yaml, "-o", out)
    FAULTS["faults injected"] += 1
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == (
        f"error: the disk is full (No space left on device): the output of job #2 is in place, but its record could "
        f"not be written to {out / 'manifest.jsonl'}; free some space and rerun the same command to resume (it records "
        "the output without rendering it again)")
    data = (out / "manifest.jsonl").read_bytes()
    assert data.endswith(b"\n") and len(data.splitlines()) == 2  # whole or absent: the half line was cut back
    monkeypatch.setattr(manifest, "_write", real_write)
    resumed = batch(jobs_yaml, "-o", out, "--json", "-q")
    assert resumed.exit_code == 0 and json.loads(resumed.stdout)["skipped"] == 3, resumed.output
    assert len(renders) == 4 and len(set(renders)) == 4  # job 2 was adopted, not rendered again
    audit(out, reference, 4)


def test_a_full_disk_that_cannot_even_record_the_failure_says_so(fast_tmp, reference, monkeypatch):
    from PIL import Image as PILImage

    real_save = PILImage.Image.save

    def full(self, fp, *args, **kwargs):
        if "00001_" in str(fp):
            raise _enospc()
        return real_save(self, fp, *args, **kwargs)

    real_write = manifest._write
    monkeypatch.setattr(PILImage.Image, "save", full)
    monkeypatch.setattr(manifest, "_write", lambda fd, data: real_write(fd, data) if b'"index": 0,' in data else
                        (_ for _ in ()).throw(_enospc()))
    out, jobs_yaml = fast_tmp / "run", job_file(fast_tmp, 3)
    result = batch(jobs_yaml, "-o", out, "-q")
    FAULTS["faults injected"] += 2
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"error: the disk is full (No space left on device) under {out}: job #1 left no "
                                     "file, and its failure could not be recorded either; free some space and rerun "
                                     "the same command to resume")
    monkeypatch.undo()
    assert batch(jobs_yaml, "-o", out, "-q").exit_code == 0
    audit(out, reference, 3)


def test_a_full_disk_before_the_first_job_is_one_line(fast_tmp, monkeypatch):
    def full(out_dir, source, jobs):
        raise _enospc(str(out_dir / "plan.json"))

    monkeypatch.setattr(runner, "write_plan", full)
    out = fast_tmp / "run"
    result = batch(job_file(fast_tmp, 2), "-o", out)
    FAULTS["faults injected"] += 1
    assert result.exit_code == 1
    assert result.stderr == (f"error: the disk is full (No space left on device) under {out}; free some space and "
                             "rerun the same command to resume\n")


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def test_a_real_full_tmpfs(tmp_path, reference):
    """A 40 KiB tmpfs (root only; skipped elsewhere): the run stops with exit 1, then completes after a remount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, "40k"):
        pytest.skip("needs root and tmpfs to mount a small file system")
    try:
        out, jobs_yaml = disk / "run", job_file(tmp_path, 12)
        result = batch(jobs_yaml, "-o", out)
        FAULTS["faults injected"] += 1
        assert result.exit_code == 1, result.output
        assert "error: the disk is full (No space left on device)" in result.stderr.splitlines()[-1]
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial file
        lines = (out / "manifest.jsonl").read_bytes().splitlines()
        done = [json.loads(line) for line in lines if json.loads(line)["status"] == "done"]
        counts = runner.status(out)
        assert 0 < counts["done"] < 12 and counts["done"] == len(list(out.glob("*.png"))) >= len(done)
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        resumed = batch(jobs_yaml, "-o", out, "-q")
        assert resumed.exit_code == 0, resumed.output
        audit(out, reference, 12)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# --- two writers on one shard -----------------------------------------------------------------------------------


def test_two_processes_on_one_shard(tmp_path, reference):
    """Started together, one renders and the other exits 2 at once naming its pid; a third started mid-run too.
    A dead owner's lock file does not block; other shards are not blocked."""
    out, jobs_yaml = tmp_path / "run", job_file(tmp_path, REFERENCE_JOBS)
    cmd = [sys.executable, "-m", "vsf_cli", "batch", str(jobs_yaml), "-o", str(out), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pair = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "manifest.jsonl").exists() and (out / "manifest.jsonl").read_text()):
        time.sleep(0.05)
    late = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)  # 'started 7 s apart'
    running = [p.poll() is None for p in pair]
    results = [(p.returncode, *p.communicate(timeout=240)) for p in pair]
    results = [(p.returncode, out_, err) for p, (_, out_, err) in zip(pair, results)]
    FAULTS["faults injected"] += 2
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = pair[[code for code, _, _ in results].index(0)]
    loser = next(r for r in results if r[0] == 2)
    assert loser[2] == f"error: shard 0 of {out} is being rendered by pid {winner.pid}\n"
    if any(running):  # the winner was still rendering when the late one started
        assert late.returncode == 2 and late.stderr == f"error: shard 0 of {out} is being rendered by pid {winner.pid}\n"
    assert (out / "manifest.jsonl.lock").read_text().split()[0] == str(winner.pid)  # stale now: its owner is gone
    again = batch(jobs_yaml, "-o", out, "--json", "-q")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == REFERENCE_JOBS
    audit(out, reference, REFERENCE_JOBS)
    with manifest.ShardLock(out / "manifest.rank0.jsonl", 0, out):  # this process renders shard 0 of 2
        busy = batch(jobs_yaml, "-o", out, "--shard", "0/2", "-q")
        assert busy.exit_code == 2 and busy.stderr == f"error: shard 0 of {out} is being rendered by pid {os.getpid()}\n"
        assert batch(jobs_yaml, "-o", out, "--shard", "1/2", "-q").exit_code == 0  # another shard is not blocked


# --- a changed output -------------------------------------------------------------------------------------------


def test_an_output_overwritten_is_not_done_for_status_resume_or_eval(fast_tmp, reference):
    out, jobs_yaml = fast_tmp / "run", job_file(fast_tmp, 4)
    assert batch(jobs_yaml, "-o", out, "-q").exit_code == 0
    names = sorted(reference)[:4]
    garbage = os.urandom((out / names[1]).stat().st_size)  # same size, other bytes
    (out / names[1]).write_bytes(garbage)
    shutil.copy(out / names[0], out / names[2])  # a real image, but another job's
    FAULTS["faults injected"] += 2
    counts = runner.status(out)
    assert (counts["done"], counts["failed"], counts["pending"]) == (2, 0, 2)
    assert [f["file"] for f in counts["foreign"]] == [names[1], names[2]]
    evaluated = cli.invoke(app, ["eval", str(out), "-q", "--json"])
    assert evaluated.exit_code == 3, evaluated.output
    assert json.loads(evaluated.stdout)["errors"] == 2 and json.loads(evaluated.stdout)["items"] == 4
    rows = [json.loads(line) for line in (out / "eval" / "toy" / "results.jsonl").read_text().splitlines()]
    assert [r["error"] is None for r in rows] == [True, False, False, True]
    assert "changed after it was rendered" in rows[1]["error"]
    resumed = batch(jobs_yaml, "-o", out)
    assert resumed.exit_code == 3 and resumed.stderr.count("is not this job's output") == 2
    assert (out / names[1]).read_bytes() == garbage  # nothing replaced without --overwrite
    assert batch(jobs_yaml, "-o", out, "--force", "-q").exit_code == 3  # --force alone does not replace them either
    assert (out / names[1]).read_bytes() == garbage
    assert batch(jobs_yaml, "-o", out, "--retry-failed", "--overwrite", "-q").exit_code == 0
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in lines if r["status"] == "done"] == [0, 1, 2, 3, 0, 3, 1, 2]  # --force redid 0 and 3
    for name in names:
        assert np.array_equal(pixels(out / name), reference[name])
    evaluated = cli.invoke(app, ["eval", str(out), "-q", "--json"])
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout)["errors"] == 0


# --- eval and report on broken files from a real run ------------------------------------------------------------


def test_eval_and_report_judge_what_they_can(fast_tmp, reference):
    out, jobs_yaml = fast_tmp / "run", job_file(fast_tmp, 2, sweep={"method": ["none", "vsf"]})
    assert batch(jobs_yaml, "-o", out, "-q").exit_code == 0
    files = sorted(out.glob("*.png"))  # none seed 0 and 1, vsf seed 0 and 1
    files[0].write_bytes(files[0].read_bytes()[:-80])  # truncated
    files[3].write_bytes(b"garbage")  # not an image
    FAULTS["faults injected"] += 2
    result = cli.invoke(app, ["eval", str(out), "--json"])
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert (summary["items"], summary["errors"]) == (4, 2)
    assert "2 of 4 items could not be judged" in result.stderr
    assert runner.status(out)["done"] == 2  # status agrees: two outputs are what was rendered
    report = cli.invoke(app, ["report", str(out), "-o", str(fast_tmp / "report"), "--rows", "1"])
    assert report.exit_code == 3, report.output
    assert (fast_tmp / "report" / "contact_sheet.png").is_file() and (fast_tmp / "report" / "tradeoff.png").is_file()
    assert "could not be drawn" in report.stderr and "2 items could not be judged" in report.stderr


# --- unbounded job files ----------------------------------------------------------------------------------------


def test_an_alias_bomb_is_refused_before_anything_is_built(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("jobs:\n  - prompt: a cat\n    meta:\n" + "".join(f"      {line}\n" for line in levels))
    started = time.perf_counter()
    result = batch(bomb, "--dry-run")
    FAULTS["faults injected"] += 1
    assert result.exit_code == 2 and time.perf_counter() - started < 5
    assert "bomb.yaml:6: more than 16 YAML aliases (*a1)" in result.stderr
    wide = tmp_path / "wide.yaml"  # few aliases, each standing for a big subtree
    wide.write_text("jobs:\n  - prompt: a cat\n    meta:\n      a: &a [" + ", ".join(["x"] * 2000) + "]\n"
                    "      b: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n      c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n")
    result = batch(wide, "--dry-run")
    assert result.exit_code == 2 and re.search(r"wide.yaml: its YAML aliases expand it to [\d,]+ values, more than 100,000",
                                               result.stderr)
    fine = tmp_path / "fine.yaml"  # a few aliases are still fine
    fine.write_text("defaults: {model: toy}\njobs:\n  - prompt: a cat\n    neg: &n roof\n  - prompt: a dog\n    neg: *n\n")
    listed = batch(fine, "--dry-run")
    assert listed.exit_code == 0 and listed.stdout.count("| roof") == 2


def test_a_3_2m_job_file_is_refused_quickly_with_the_count(tmp_path):
    big = tmp_path / "big.yaml"
    names = ["a", "b", "c", "d", "e"]
    big.write_text(yaml.safe_dump({"defaults": {"model": "toy"}, "vars": {n: [f"{n}{i}" for i in range(20)] for n in names},
                                   "jobs": [{"prompt": " ".join(f"{{{n}}}" for n in names)}]}))
    started = time.perf_counter()
    with pytest.raises(Exception, match=r"expands to 3,200,000 jobs .*more than the limit of 100,000; pass "
                                        r"--max-jobs 3200000"):
        plan.expand(spec.load(big), preset={}, env={}, flags={}, out_dir=tmp_path)
    FAULTS["3.2M refusal ms (in process)"] = round(1000 * (time.perf_counter() - started))
    done = subprocess.run([sys.executable, "-m", "vsf_cli", "batch", str(big), "--dry-run"], capture_output=True,
                          text=True, timeout=60)
    FAULTS["faults injected"] += 1
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"error: {big} expands to 3,200,000 jobs (jobs x vars x sweep x seeds), more than the limit "
                           "of 100,000; pass --max-jobs 3200000 to allow it, or split the file\n")
    seeds = job_file(tmp_path, 100_000_000)
    result = batch(seeds, "--dry-run", "--json")
    assert result.exit_code == 2 and "expands to 100,000,000 jobs" in result.stderr
    small = job_file(tmp_path, 12, sweep={"method": ["none", "vsf"]})
    assert "expands to 24 jobs" in batch(small, "--dry-run", "--max-jobs", "23").stderr
    assert json.loads(batch(small, "--dry-run", "--json", "--max-jobs", "24").stdout)["jobs"] == 24


# --- a randomized kill -9 soak ----------------------------------------------------------------------------------

# A helper process that imports vsf and torch once (one OpenMP thread, so forking is safe) and then forks a fresh
# `vsf batch` process per request: kill -9 on a real process without paying the imports twenty times. Each child
# logs the start and end of each render, so a finished job rendered again would show.
ZYGOTE = r"""
import os, sys
from vsf_cli.cli import app
from vsf_cli.generate import Renderer

args, log = sys.argv[1:-1], sys.argv[-1]
try:
    app([*args[:-2], args[-2] + ".warm", "-q", "--shard", "0/16"], prog_name="vsf")  # imports and loads once
except SystemExit:
    pass
real = Renderer.render

def logged(self, settings, path, on_step=lambda: None):
    os.write(fd, f"start {settings['job_id']}\n".encode())
    record = real(self, settings, path, on_step)
    os.write(fd, f"end {settings['job_id']}\n".encode())
    return record

Renderer.render = logged
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 0), os.dup2(null, 1), os.dup2(null, 2)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        code = 1
        try:
            app(args, prog_name="vsf")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_kill_9_at_random_times_then_resume_gives_the_uninterrupted_pixels(fast_tmp, reference):
    out, log = fast_tmp / "run", fast_tmp / "renders.log"
    args = ["batch", str(job_file(fast_tmp, REFERENCE_JOBS)), "-o", str(out), "-q"]
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE, *args, str(log)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert zygote.stdout.readline() == "ready\n"

        def start() -> int:
            zygote.stdin.write("go\n")
            zygote.stdin.flush()
            return int(zygote.stdout.readline())

        rng = random.Random(16)  # a fixed seed: the same kill times on every run of the test
        kills, deadline = 0, time.monotonic() + 40
        while kills < KILLS and time.monotonic() < deadline:
            starts = log.read_text().count("start ") if log.exists() else 0
            pid = start()
            if rng.random() < 0.75:  # mostly in a render or its record: after the child's first render begins
                until = time.monotonic() + 10
                while time.monotonic() < until and (log.read_text().count("start ") if log.exists() else 0) == starts:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.4))
            else:  # anywhere, the start-up (lock, repair, adoption, model load) included
                time.sleep(rng.uniform(0.0, 0.6))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            code = int(zygote.stdout.readline())
            if code != -signal.SIGKILL:  # it finished before its kill: the batch is complete
                assert code == 0
                break
            kills += 1
        start()  # the resume, uninterrupted
        assert int(zygote.stdout.readline()) == 0
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    FAULTS["faults injected"] += kills
    FAULTS["soak kills"] += kills
    assert kills >= 5, f"only {kills} kills landed mid-batch"
    events = [line.split() for line in log.read_text().splitlines()]
    ends = Counter(job for event, job in events if event == "end")
    FAULTS["soak renders cut by a kill"] += sum(event == "start" for event, _ in events) - sum(ends.values())
    assert not [i for i, n in ends.items() if n > 1], "a finished job was rendered again"
    corrupt = out / ("manifest.jsonl" + manifest.CORRUPT_SUFFIX)
    FAULTS["soak cut records set aside"] += len(corrupt.read_bytes().splitlines()) if corrupt.exists() else 0
    FAULTS["soak adopted"] += sum(1 for line in (out / "manifest.jsonl").read_text().splitlines()
                                  if json.loads(line).get("adopted"))
    audit(out, reference, REFERENCE_JOBS)
