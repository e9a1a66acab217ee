"""`vsf batch`: schema errors, expansion, precedence, presets, resume after a crash, failures and sharding."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vsf_cli.batch import plan, spec
from vsf_cli.cli import app
from vsf_cli.errors import UsageError

runner = CliRunner()


def write(tmp_path, data, name="jobs.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def expand(batch, preset=None, env=None, flags=None, out=Path("out")):
    return plan.expand(batch, preset=preset or {}, env=env or {}, flags=flags or {}, out_dir=out)


# --- schema -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("jobs:\n  - prompt: a cat\nsede: 3\n", r"jobs.yaml:3 \(sede\): unknown key; allowed: .*description, preset, defaults, output, jobs"),
    ("jobs:\n  - prompt: a cat\n    sclae: 3\n", r"jobs.yaml:3 \(jobs.0.sclae\): unknown key; allowed: .*scale"),
    ("defaults:\n  steps: many\njobs:\n  - prompt: a cat\n", r"jobs.yaml:2 \(defaults.steps\): Input should be a valid integer"),
    ("jobs:\n  - prompt: a cat\n    seeds: [1, -2]\n", r"jobs.yaml:3 \(jobs.0.seeds\)"),
    ("jobs: []\n", "jobs"),
    ("jobs:\n  - prompt: [a cat\n", r"jobs.yaml:\d+: not valid YAML"),
    ("- a\n- b\n", "a mapping with `jobs:`"),
    ("sweep: {colour: [1]}\njobs:\n  - prompt: a cat\n", r"cannot sweep 'colour'"),
    ("jobs:\n  - prompt: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
])
def test_schema_errors_name_file_line_and_allowed_keys(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        spec.load(write(tmp_path, text))


def test_cli_schema_error_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["batch", str(write(tmp_path, "jobs:\n  - prompt: a\n    bad: 1\n")), "--dry-run"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "jobs.yaml:3" in result.stderr


def test_an_output_template_must_stay_inside_the_output_folder(tmp_path):
    jobs = write(tmp_path, {"jobs": [{"prompt": "a cat"}]})
    for output in ("../{index}.png", "/tmp/{index}.png", "a/../../{index}.png"):
        result = runner.invoke(app, ["batch", str(jobs), "--output", output, "--dry-run"])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == (f"error: --output {output!r} must stay inside the output folder "
                                         "(use -o/--out to choose the folder)")
    result = runner.invoke(app, ["batch", str(write(tmp_path, {"output": "../{id}.png", "jobs": [{"prompt": "a"}]})),
                                 "--dry-run"])
    assert result.exit_code == 2 and "in " + str(tmp_path / "jobs.yaml") + " must stay inside the output folder" in result.stderr
    listed = runner.invoke(app, ["batch", str(jobs), "--output", "sub/{index}.png", "--dry-run", "-o", str(tmp_path / "o")])
    assert listed.exit_code == 0 and str(tmp_path / "o" / "sub" / "0.png") in listed.stdout


def test_two_jobs_may_not_share_an_output_file(tmp_path):
    with pytest.raises(UsageError, match=r"gives the same file for jobs 0 and 1 .*add \{index\}, \{seed\} or \{id\}"):
        expand(spec.load(write(tmp_path, {"output": "{slug}.png", "seeds": 2, "jobs": [{"prompt": "a cat"}]})))


def test_undefined_variable_and_escaping_templates_are_refused(tmp_path):
    with pytest.raises(UsageError, match="no `vars:` defines"):
        expand(spec.load(write(tmp_path, {"jobs": [{"prompt": "a {animal}"}]})))
    for output in ("../x_{id}.png", "/tmp/{id}.png"):
        with pytest.raises(UsageError, match="output template"):
            expand(spec.load(write(tmp_path, {"output": output, "jobs": [{"prompt": "a cat"}]})))
    jobs = expand(spec.load(write(tmp_path, {"output": "{slug}.png", "jobs": [{"prompt": "../../etc/passwd"}]})))
    assert jobs[0].path.parent == Path("out")


# --- expansion ------------------------------------------------------------------------------------------------


def test_expansion_counts_vars_sweep_seeds(tmp_path):
    batch = spec.load(write(tmp_path, {
        "seeds": 2, "vars": {"animal": ["cat", "dog", "fox"]}, "sweep": {"scale": [1, 2]},
        "jobs": [{"prompt": "a {animal}", "neg": "red {animal}"},
                 {"prompt": "a car", "neg": "wheels", "seeds": [7], "sweep": {"scale": [3], "method": ["none", "vsf"]}}],
    }))
    jobs = expand(batch)
    assert len(jobs) == 3 * 2 * 2 + 2
    assert [j.index for j in jobs] == list(range(14))
    assert {j.settings["negative"] for j in jobs[:12]} == {"red cat", "red dog", "red fox"}
    assert jobs[0].meta == {"animal": "cat"}
    assert [(j.settings["method"], j.settings["scale"], j.settings["seed"]) for j in jobs[12:]] == [("none", None, 7), ("vsf", 3.0, 7)]
    assert len({j.id for j in jobs}) == len({str(j.path) for j in jobs}) == 14


def test_a_list_of_negatives_in_yaml_is_several_with_variables_filled_in_each(tmp_path):
    batch = spec.load(write(tmp_path, {
        "vars": {"animal": ["cat", "dog"]},
        "jobs": [{"prompt": "a {animal}", "neg": ["red {animal}", "a blurry {prompt}"]}, {"prompt": "a car", "neg": ["wheels"]}],
    }))
    jobs = expand(batch)
    assert [j.settings["negative"] for j in jobs] == [["red cat", "a blurry a cat"], ["red dog", "a blurry a dog"], "wheels"]
    assert jobs[0].settings["method"] == "vsf" and len({j.id for j in jobs}) == 3
    flag = expand(batch, flags={"negative": ["sun", "ball"]})
    assert all(j.settings["negative"] == ["sun", "ball"] for j in flag)
    with pytest.raises(UsageError, match="a negative prompt is empty"):
        expand(spec.load(write(tmp_path, {"jobs": [{"prompt": "a car", "neg": ["wheels", " "]}]}, "blank.yaml")))


def test_job_ids_are_stable_and_ignore_placement(tmp_path):
    batch = spec.load(write(tmp_path, {"jobs": [{"prompt": "a cat", "neg": "red"}]}))
    first, again = expand(batch)[0], expand(batch)[0]
    assert first.id == again.id and first.path == again.path
    assert expand(batch, flags={"device": "cuda:1", "offload": "model"})[0].id == first.id
    assert expand(batch, flags={"scale": 2.0})[0].id != first.id


def test_precedence_model_preset_file_job_env_flags(tmp_path):
    preset = spec.preset_defaults("nag-strong")  # method nag, nag_scale 10, nag_alpha 0.5, nag_tau 5
    batch = spec.load(write(tmp_path, {"defaults": {"nag_scale": 8, "steps": 4},
                                       "jobs": [{"prompt": "a", "neg": "b", "nag_scale": 6, "nag_alpha": 0.3}]}))
    s = expand(batch, preset=preset)[0].settings
    assert (s["method"], s["nag_tau"], s["nag_scale"], s["nag_alpha"], s["steps"]) == ("nag", 5.0, 6.0, 0.3, 4)
    assert s["width"] == 1024  # the model's default
    s = expand(batch, preset=preset, env={"steps": "3", "method": "vsf"})[0].settings
    assert (s["steps"], s["method"], s["nag_scale"]) == (3, "vsf", None)
    s = expand(batch, preset=preset, env={"steps": "3"}, flags={"steps": 2})[0].settings
    assert s["steps"] == 2


def test_text_and_neggenbench_inputs(tmp_path):
    txt = spec.load(write(tmp_path, "# comment\na red bike | wheels\n\na cat\n", "p.txt"))
    assert [(j.prompt, j.neg) for j in txt.jobs] == [("a red bike", "wheels"), ("a cat", None)]
    items = [{"id": 0, "prompt": "a bike", "negative": "wheels", "question_positive": "Q1", "question_negative": "Q2"}]
    small = spec.load(write(tmp_path, json.dumps(items), "bench.json"))
    jobs = expand(small)
    assert len(jobs) == 2 and jobs[0].meta == {"id": 0, "question_positive": "Q1", "question_negative": "Q2"}
    # The shipped preset, written back as NegGenBench JSON, reads the same (only files in the repository).
    shipped = spec.load(spec.preset_path("neggenbench"))
    assert len(shipped.jobs) == 200 and shipped.seeds == [0, 1]
    assert all(j.meta["question_positive"] and j.meta["question_negative"] for j in shipped.jobs)
    as_json = [{"prompt": j.prompt, "negative": j.neg, **j.meta} for j in shipped.jobs]
    bench = spec.load(write(tmp_path, json.dumps(as_json), "neggenbench.json"))
    assert [(j.prompt, j.neg, j.meta) for j in bench.jobs] == [(j.prompt, j.neg, j.meta) for j in shipped.jobs]


@pytest.mark.parametrize("name, text, message", [
    ("p.txt", "a cat | red\n | only neg\n", r"p.txt:2: no prompt before the '\|'"),
    ("b.json", '[{"prompt": "a", "negative": "b"}, {"prompt": "", "negative": "c"}]', r"b.json: item 1 \(prompt\)"),
    ("b.json", '[{"prompt": "a"}]', r"b.json: item 0: expected NegGenBench JSON"),
    ("b.json", '{"prompt": "a"}', r"b.json: expected NegGenBench JSON"),
])
def test_text_and_json_errors_name_the_line_or_item(tmp_path, name, text, message):
    path = write(tmp_path, text, name)
    with pytest.raises(UsageError, match=message):
        spec.load(path)
    result = run_batch(path, "--dry-run")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output


def test_shipped_presets_load_and_expand():
    counts = {name: len(expand(spec.load(spec.preset_path(name)))) for name in spec.preset_names()}
    assert counts["anti-aesthetic"] == 8 and counts["abstract-art"] == 4 and counts["nag-strong"] == 4
    assert counts["neggenbench"] == 400 and counts["toyneg"] == 216
    for name, scale in (("vsf-strong", 3.8), ("vsf-quality", 3.3)):  # the seed code's two settings, paper variant
        s = expand(spec.load(spec.preset_path(name)))[0].settings
        assert counts[name] == 4 and (s["method"], s["variant"], s["scale"], s["offset"]) == ("vsf", "paper", scale, 0.2)
    art = expand(spec.load(spec.preset_path("abstract-art")))
    assert art[0].settings["negative"] == art[0].settings["prompt"] and art[3].settings["negative"] == "people"
    listed = runner.invoke(app, ["presets"])
    assert listed.exit_code == 0 and "abstract-art" in listed.stdout and "neggenbench\t200 jobs" in listed.stdout
    shown = runner.invoke(app, ["presets", "show", "anti-aesthetic"])
    assert "Figure 4" in shown.stdout
    assert runner.invoke(app, ["presets", "show", "nope"]).exit_code == 2


def test_gen_preset_layer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    row = json.loads(runner.invoke(app, ["gen", "a red car", "--preset", "abstract-art", "--dry-run", "--json",
                                         "--seed", "1"]).stdout)
    assert (row["negative"], row["scale"]) == ("a red car", 2.0)
    row = json.loads(runner.invoke(app, ["gen", "a red car", "--preset", "abstract-art", "--scale", "3", "--neg",
                                         "car", "--dry-run", "--json", "--seed", "1"]).stdout)
    assert (row["negative"], row["scale"]) == ("car", 3.0)


# --- running on a tiny model ------------------------------------------------------------------------------------


@pytest.fixture
def job_file(sd3_dir, tmp_path):
    return write(tmp_path, {"defaults": {"model": str(sd3_dir), "steps": 1, "size": 32},
                            "seeds": [0, 1], "jobs": [{"prompt": "a red bike", "neg": "wheels"},
                                                      {"prompt": "a cat", "neg": "red"}]})


def run_batch(*args):
    return runner.invoke(app, ["batch", *map(str, args)])


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_runs_resumes_and_forces(job_file, tmp_path):
    out = tmp_path / "run"
    first = run_batch(job_file, "-o", out, "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout.splitlines()[-1])["done"] == 4
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4 and all(r["status"] == "done" for r in manifest(out))
    again = run_batch(job_file, "-o", out, "--json")
    assert json.loads(again.stdout.splitlines()[-1]) == {"done": 0, "skipped": 4, "failed": 0, "failed_before": 0,
                                                         "out": str(out)}
    pngs[0].unlink()  # a done job whose file is gone runs again
    assert json.loads(run_batch(job_file, "-o", out, "--json").stdout.splitlines()[-1])["done"] == 1
    assert json.loads(run_batch(job_file, "-o", out, "--json", "--force").stdout.splitlines()[-1])["done"] == 4
    status = runner.invoke(app, ["batch", "status", str(out), "--json"])
    assert json.loads(status.stdout) == {"total": 4, "done": 4, "failed": 0, "pending": 0, "unrecorded": 0,
                                        "failures": [], "foreign": []}


def test_failures_do_not_stop_the_batch_and_exit_3(job_file, tmp_path, monkeypatch):
    from vsf_cli.generate import Renderer

    real = Renderer.render

    def flaky(self, settings, path, on_step=lambda: None):
        if settings["prompt"] == "a cat":
            raise RuntimeError("CUDA out of memory. Tried to allocate 9 GiB")
        return real(self, settings, path, on_step)

    monkeypatch.setattr(Renderer, "render", flaky)
    out = tmp_path / "run"
    result = run_batch(job_file, "-o", out)
    assert result.exit_code == 3
    records = manifest(out)
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 2 and all("--offload" in r["error"] for r in failed)
    status = runner.invoke(app, ["batch", "status", str(out)])
    assert status.stdout.startswith("2/4 done, 2 failed, 0 pending")
    assert run_batch(job_file, "-o", out).exit_code == 3  # still failed, not retried by default
    assert len(manifest(out)) == 4
    monkeypatch.setattr(Renderer, "render", real)
    assert run_batch(job_file, "-o", out, "--retry-failed").exit_code == 0
    assert len(list(out.glob("*.png"))) == 4


def test_fail_fast_and_missing_model_fail_jobs_not_the_run(job_file, tmp_path):
    out = tmp_path / "run"
    result = run_batch(job_file, "-o", out, "--model", str(tmp_path / "nowhere"), "--fail-fast")
    assert result.exit_code == 2  # an unknown model is caught while planning, before anything runs
    bad = write(tmp_path, {"defaults": {"steps": 1, "size": 32}, "jobs": [{"prompt": "a", "neg": "b"}]}, "bad.yaml")
    result = run_batch(bad, "-o", out, "--offline")
    assert result.exit_code == 3
    assert "not in the local cache" in manifest(out)[0]["error"]


def test_interrupt_keeps_manifest_consistent_and_resumes(job_file, tmp_path, monkeypatch):
    from vsf_cli.generate import Renderer

    real, calls = Renderer.render, []

    def interrupted(self, settings, path, on_step=lambda: None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, settings, path, on_step)

    monkeypatch.setattr(Renderer, "render", interrupted)
    out = tmp_path / "run"
    assert run_batch(job_file, "-o", out).exit_code == 130
    assert len(manifest(out)) == 1 and len(list(out.glob("*.png"))) == 1
    assert not [p for p in out.iterdir() if "partial" in p.name]
    monkeypatch.setattr(Renderer, "render", real)
    result = run_batch(job_file, "-o", out, "--json")
    assert json.loads(result.stdout.splitlines()[-1])["done"] == 3


def test_dry_run_lists_or_counts(job_file, tmp_path):
    listed = run_batch(job_file, "--dry-run", "-o", tmp_path / "x")
    assert len(listed.stdout.splitlines()) == 4 and "a red bike | wheels" in listed.stdout
    counted = json.loads(run_batch(job_file, "--dry-run", "--json", "--shard", "1/3").stdout)
    assert (counted["jobs"], counted["mine"], counted["shard"]) == (4, 1, "1/3")
    assert not (tmp_path / "x").exists()


def test_crash_then_resume_leaves_each_output_once(sd3_dir, tmp_path):
    """Kill the process (SIGKILL) mid-batch, rerun: every output exists exactly once, no partial files."""
    jobs = write(tmp_path, {"defaults": {"model": str(sd3_dir), "steps": 30, "size": 64}, "seeds": 6,
                            "jobs": [{"prompt": "a red bike", "neg": "wheels"}]})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vsf_cli", "batch", str(jobs), "-o", str(out), "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not ((out / "manifest.jsonl").exists() and (out / "manifest.jsonl").read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len((out / "manifest.jsonl").read_text().splitlines())
    assert 1 <= before < 6, "the kill should land mid-batch"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = manifest(out)
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    assert sorted(p.name for p in out.glob("*.png")) == sorted(Path(r["path"]).name for r in records)
    assert not [p for p in out.iterdir() if "partial" in p.name]


def test_torchrun_two_ranks_shard_disjoint_and_complete(sd3_dir, tmp_path):
    jobs = write(tmp_path, {"defaults": {"model": str(sd3_dir), "steps": 1, "size": 32}, "seeds": 5,
                            "jobs": [{"prompt": "a red bike", "neg": "wheels"}]})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29617",
           "-m", "vsf_cli", "batch", str(jobs), "-o", str(out), "-q"]
    done = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = {r: [json.loads(x) for x in (out / f"manifest.rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    indices = {r: {rec["index"] for rec in recs} for r, recs in ranks.items()}
    assert indices == {0: {0, 2, 4}, 1: {1, 3}}
    assert len(list(out.glob("*.png"))) == 5
    status = runner.invoke(app, ["batch", "status", str(out), "--json"])
    assert json.loads(status.stdout) == {"total": 5, "done": 5, "failed": 0, "pending": 0, "unrecorded": 0,
                                        "failures": [], "foreign": []}


SHARD_VARS = ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
              "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP")


def test_shard_from_environment(monkeypatch):
    for key in SHARD_VARS:
        monkeypatch.delenv(key, raising=False)
    assert plan.shard(None) == (0, 1)
    assert plan.shard("2/4") == (2, 4)
    with pytest.raises(UsageError):
        plan.shard("4/4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert plan.shard(None) == (3, 4)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert plan.shard(None) == (1, 2)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert plan.shard(None) == (5, 8)
    assert plan.shard("0/1") == (0, 1)


@pytest.mark.parametrize("env, message", [
    ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc' is not a whole number"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
    ({"RANK": "5", "WORLD_SIZE": "2"}, "RANK=5 with WORLD_SIZE=2: need 0 <= RANK < WORLD_SIZE"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1 with WORLD_SIZE=2"),
    ({"RANK": "1", "WORLD_SIZE": "1"}, "RANK=1 with WORLD_SIZE=1"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
    ({"SLURM_PROCID": "4", "SLURM_NTASKS": "4"}, "SLURM_PROCID=4 with SLURM_NTASKS=4"),
    ({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_ID=9 with SLURM_ARRAY_TASK_COUNT=4"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_ID='x' is not a whole number"),
])
def test_every_shard_source_is_checked_alike(monkeypatch, tmp_path, env, message):
    """--shard 5/2 is refused, and so is RANK=5 WORLD_SIZE=2 (which used to render nothing): one line, exit 2."""
    for key in SHARD_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UsageError, match=re.escape(message)):
        plan.shard(None)
    jobs = write(tmp_path, {"jobs": [{"prompt": "a cat"}]})
    result = runner.invoke(app, ["batch", str(jobs), "--dry-run"], env=env)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.output
    assert runner.invoke(app, ["batch", str(jobs), "--dry-run", "--shard", "0/1"], env=env).exit_code == 0  # the flag wins


def test_slurm_arrays_may_start_anywhere_and_step(monkeypatch):
    for key in SHARD_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "2")  # --array=10-16:2
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "14")
    assert plan.shard(None) == (2, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "15")
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK_ID=15 is not SLURM_ARRAY_TASK_MIN=10 plus a multiple"):
        plan.shard(None)


def test_a_model_path_in_a_job_file_is_relative_to_the_file(sd3_dir, tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "tiny-sd3").symlink_to(sd3_dir, target_is_directory=True)
    jobs = write(folder, {"defaults": {"model": "./models/tiny-sd3", "steps": 1, "size": 32},
                          "sweep": {"model": ["models/tiny-sd3", "../configs/models/tiny-sd3"]},
                          "jobs": [{"prompt": "a cat", "neg": "red"}, {"prompt": "a dog", "model": "org/not-a-folder",
                                                                      "sweep": {"model": ["toy"]}}]})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    batch = spec.load(Path("..") / "configs" / "jobs.yaml")
    resolved = str((folder / "models" / "tiny-sd3").resolve())
    assert batch.defaults.model == resolved and batch.sweep["model"] == [resolved, resolved]
    assert (batch.jobs[1].model, batch.jobs[1].sweep["model"]) == ("org/not-a-folder", ["toy"])  # a hub id, an alias
    result = runner.invoke(app, ["batch", str(Path("..") / "configs" / "jobs.yaml"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["per_model"] == {resolved: 1, "toy": 1}  # the sweep made one job of two
    # In the file's own folder a path stays as written (the README's bikes.yaml), so its job ids do not change.
    monkeypatch.chdir(folder)
    assert spec.load(Path("jobs.yaml")).defaults.model == "./models/tiny-sd3"
    # A flag is the command line's: relative to the current folder.
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["batch", str(jobs), "--dry-run", "--json", "--model", "./models/tiny-sd3"])
    assert result.exit_code == 2 and "unknown model ./models/tiny-sd3" in result.stderr


def test_status_of_a_missing_or_foreign_folder_is_a_usage_error(tmp_path):
    for folder, message in ((tmp_path / "nope", f"error: {tmp_path / 'nope'}: no such folder"),
                            (write(tmp_path, "x", "afile"), "is not a folder"),
                            (tmp_path, "has no plan.json")):
        result = runner.invoke(app, ["batch", "status", str(folder)])
        assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.output


def test_a_reader_that_leaves_early_stops_the_batch_with_141(tmp_path):
    """`vsf batch ... | head -2` on stdout (the dry-run list) or on stderr (progress lines): quietly, status 141."""
    jobs = write(tmp_path, {"defaults": {"model": "toy"}, "seeds": 3000, "jobs": [{"prompt": "a red house"}]})
    base = [sys.executable, "-m", "vsf_cli", "batch", str(jobs), "-o", str(tmp_path / "run")]
    listing = subprocess.Popen([*base, "--dry-run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert listing.stdout.readline().startswith(b"0\t")
    listing.stdout.close()
    assert listing.wait(timeout=60) == 141 and listing.stderr.read() == b""
    running = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # as `2>&1 | head -1`
    assert running.stderr.readline().startswith(b"3000 jobs, shard 0/1")
    running.stderr.close()
    assert running.wait(timeout=60) == 141
