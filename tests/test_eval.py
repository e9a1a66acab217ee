"""`vsf eval` and `vsf report`: the openai judge against a local fake server, the cache, statistics and report files."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vsf_cli.cli import app
from vsf_cli.eval import items as eval_items
from vsf_cli.eval import judges, stats
from vsf_cli.eval import run as eval_run
from vsf_cli.errors import VsfError
from vsf_cli.eval.cache import Cache

runner = CliRunner()
SECRET = "sk-test-not-to-be-written-anywhere"


# --- fixtures: a run folder written directly, and a fake OpenAI-compatible server ---------------------------------


def make_run(folder: Path, jobs: list[dict], seeds=(0, 1)) -> Path:
    """A batch output folder: one small PNG and one manifest line per (job, seed), as `vsf batch` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (job, seed) in enumerate((j, s) for j in jobs for s in seeds):
        name = f"{index:05d}.png"
        colour = (index * 37 % 256, index * 91 % 256, seed * 120)  # a different image (sha256) per job
        Image.new("RGB", (16, 16), colour).save(folder / name)
        settings = {"prompt": job["prompt"], "negative": job["neg"], "model": job.get("model", "sd35-large-turbo"),
                    "method": job.get("method", "vsf"), "scale": job.get("scale"), "steps": 8, "seed": seed,
                    "device": "auto"}
        lines.append(json.dumps({"id": f"id{index}", "index": index, "path": str(folder / name), "file": name,
                                 "seed": seed, "status": "done", "settings": settings, "meta": job.get("meta", {})}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder


BENCH = [{"prompt": "a sailboat on calm water", "neg": "sails",
          "meta": {"question_positive": "Is the image showing a sailboat", "question_negative": "Are the sails missing"}},
         {"prompt": "a red bicycle", "neg": "chain"}]


def sweep(jobs, methods=("none", "vsf")):
    return [{**j, "method": m} for m in methods for j in jobs]


def answer(a1=True, a2=True, quality=0.9):
    return json.dumps({"reasoning": "looked", "answer_1": a1, "answer_2": a2, "quality": quality})


class FakeJudge(ThreadingHTTPServer):
    """POST /v1/chat/completions and GET /v1/models. `reply(body, n)` returns the content of the n-th request."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.sleep = 0.0
        self.reply = lambda body, n: answer()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "judge-model", "object": "model", "created": 0, "owned_by": "test"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.requests.append({**body, "authorization": self.headers.get("Authorization")})
            n = len(server.requests)
        if server.sleep:
            time.sleep(server.sleep)
        try:
            self._send({"id": f"c{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": server.reply(body, n)}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)


@pytest.fixture
def judge_server():
    server = FakeJudge()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_eval(run, server_url, *extra, env=None, quiet=True):
    return runner.invoke(app, ["eval", str(run), "--judge", "openai", "--base-url", server_url,
                               "--judge-model", "judge-model", *(["-q"] if quiet else []), *extra],
                         env={"OPENAI_API_KEY": SECRET, **(env or {})})


def results(run, folder="openai-judge-model"):
    return [json.loads(line) for line in (run / "eval" / folder / "results.jsonl").read_text().splitlines()]


# --- the openai judge through the real client --------------------------------------------------------------------


def test_right_answers_are_summarised_and_a_rerun_asks_nothing(tmp_path, judge_server):
    run = make_run(tmp_path / "run", sweep(BENCH))
    judge_server.reply = lambda body, n: answer(a2="sailboat" in json.dumps(body))
    first = run_eval(run, judge_server.url, "--json")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert [s["setting"] for s in summary["settings"]] == ["none", "vsf"] and summary["errors"] == 0
    assert summary["prompt_version"] == judges.PROMPT_VERSION and summary["items"] == 8
    assert all(s["negative"]["mean"] == 0.5 and s["quality"]["mean"] == 0.9 for s in summary["settings"])
    assert len(judge_server.requests) == 8
    body = next(r for r in judge_server.requests if "sailboat" in r["messages"][1]["content"][0]["text"])
    assert body["temperature"] == 0 and body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == judges.ANSWER_SCHEMA
    assert body["messages"][0] == {"role": "system", "content": judges.SYSTEM_PROMPT}
    user = body["messages"][1]["content"]
    assert "Question 1: Is the image showing a sailboat\nQuestion 2: Are the sails missing" in user[0]["text"]
    assert user[1]["image_url"]["url"].startswith("data:image/png;base64,")
    template = [r for r in judge_server.requests if "bicycle" in r["messages"][1]["content"][0]["text"]][0]
    assert "Is the chain missing or not visible?" in template["messages"][1]["content"][0]["text"]
    assert body["authorization"] == f"Bearer {SECRET}"
    assert all(r["quality"] == 0.9 and r["prompt_version"] == judges.PROMPT_VERSION for r in results(run))

    second = run_eval(run, judge_server.url, "--json")
    assert second.exit_code == 0 and len(judge_server.requests) == 8  # every answer came from the cache
    assert all(r["cached"] for r in results(run))
    assert json.loads(second.stdout)["settings"] == summary["settings"]
    for path in run.rglob("*"):  # the API key is never written
        assert path.is_dir() or SECRET.encode() not in path.read_bytes()


def test_malformed_answers_are_retried_then_recorded_as_errors_and_not_cached(tmp_path, judge_server):
    run = make_run(tmp_path / "run", BENCH[:1], seeds=(0,))
    bad = ["not json", json.dumps({"reasoning": "x", "answer_1": "yes", "answer_2": True, "quality": 0.5}),
           answer(quality=1.5)]
    judge_server.reply = lambda body, n: bad[n - 1] if n <= 3 else answer()
    result = run_eval(run, judge_server.url, "--retries", "2", quiet=False)
    assert result.exit_code == 3 and len(judge_server.requests) == 3
    [row] = results(run)
    assert row["error"].startswith("invalid answer 3 times") and row["answer_1"] is None
    assert "could not be judged (first: invalid answer 3 times" in result.stderr
    assert run_eval(run, judge_server.url).exit_code == 0  # the error was not cached: asked again, the 4th is good
    assert len(judge_server.requests) == 4 and results(run)[0]["error"] is None

    run2 = make_run(tmp_path / "run2", BENCH[:1], seeds=(0,))
    judge_server.reply = lambda body, n: "not json" if n % 2 else answer()
    assert run_eval(run2, judge_server.url, "--retries", "1").exit_code == 0  # bad, then good on the retry


def test_timeouts_are_recorded_per_item(tmp_path, judge_server):
    run = make_run(tmp_path / "run", BENCH[:1], seeds=(0,))
    judge_server.sleep = 1.0
    start = time.monotonic()
    result = run_eval(run, judge_server.url, "--timeout", "0.2", "--retries", "0")
    assert result.exit_code == 3 and time.monotonic() - start < 5
    assert results(run)[0]["error"] == "timed out (--timeout)"


def test_user_errors_are_one_line_with_their_exit_code(tmp_path, judge_server):
    run = make_run(tmp_path / "run", BENCH, seeds=(0,))
    (tmp_path / "empty").mkdir()
    cases = [
        (["eval", str(tmp_path / "nope")], 2, "no such folder"),
        (["eval", str(tmp_path / "nope"), "--base-url", "notaurl"], 2, "--base-url 'notaurl' (or VSF_JUDGE_BASE_URL) is not an http(s) URL"),
        (["eval", str(run), "--base-url", "ftp://host/v1", "--judge-model", "m"], 2, "is not an http(s) URL"),
        (["eval", str(run), "--base-url", "http://:8000/v1", "--judge-model", "m"], 2, "is not an http(s) URL"),
        (["eval", str(run), "--base-url", "http://host:port/v1", "--judge-model", "m"], 2, "is not an http(s) URL"),
        (["eval", str(tmp_path / "empty")], 2, "no manifest"),
        (["eval", str(run), "--base-url", judge_server.url], 2, "--judge-model"),
        (["eval", str(run), "--judge", "gpt"], 2, "unknown judge 'gpt'"),
        (["eval", str(run), "--judge", "toy"], 2, "meta.expect"),
        (["eval", str(run), "--base-url", "http://127.0.0.1:9/v1", "--judge-model", "m", "--retries", "0"], 1, "cannot reach the judge"),
        (["eval", str(run), "--base-url", judge_server.url, "--judge-model", "m", "--baseline", "method=cfg"], 2, "matches 0 settings"),
        (["eval", str(run), "--base-url", judge_server.url, "--judge-model", "m", "--baseline", "cfg"], 2, "KEY=VALUE"),
        (["report", str(run)], 2, "no eval results"),
    ]
    for args, code, message in cases:
        result = runner.invoke(app, args, env={"VSF_JUDGE_MODEL": None, "VSF_JUDGE_BASE_URL": None, "OPENAI_API_KEY": None})
        assert result.exit_code == code, (args, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_interrupted_eval_resumes_from_the_cache(tmp_path):
    run = make_run(tmp_path / "run", BENCH)
    items = eval_items.load(run)

    class Flaky:
        name, model, prompt_version, concurrency, frames = "fake", "m", "v1", 1, 0
        asked, limit = [], 2

        def ask(self, item):
            if len(self.asked) >= self.limit:
                raise KeyboardInterrupt
            self.asked.append(item.id)
            return {"answer_1": True, "answer_2": False, "quality": 0.5, "reasoning": ""}

    judge = Flaky()
    with Cache(run / "eval" / "cache.sqlite") as cache, pytest.raises(KeyboardInterrupt):
        eval_run.judge_items(items, judge, cache)
    judge.limit = 99
    with Cache(run / "eval" / "cache.sqlite") as cache:
        rows = eval_run.judge_items(items, judge, cache)
    assert [r["cached"] for r in rows] == [True, True, False, False] and len(judge.asked) == 4
    assert all(r["error"] is None for r in rows)


# --- items and settings ------------------------------------------------------------------------------------------


def test_settings_are_the_method_plus_what_varies_and_questions_fall_back_to_the_template(tmp_path):
    jobs = [{**BENCH[1], "method": "none"}, {**BENCH[1], "scale": 2.0}, {**BENCH[1], "scale": 4.0}]
    items = eval_items.load(make_run(tmp_path / "run", jobs, seeds=(0,)))
    assert [i.setting for i in items] == ["none", "vsf scale=2", "vsf scale=4"]
    assert items[0].questions == eval_items.template_questions("a red bicycle", "chain")


@pytest.mark.parametrize("name", ["v.mp4", "v.webp"])
def test_a_video_is_judged_on_evenly_spaced_frames(tmp_path, name):
    from vsf_cli.render.video import save_video

    save_video(np.stack([np.full((32, 32, 3), 20 * i, np.uint8) for i in range(10)]), tmp_path / name, 8, {})
    means = [np.asarray(f).mean() for f in eval_items.frames(tmp_path / name, 4)]
    assert np.allclose(means, [0, 60, 120, 180], atol=3)
    item = eval_items.Item(id="v", run=tmp_path, file=name, sha256="0", prompt="a car", negative="wheels", seed=0,
                           method="vsf", settings={}, meta={}, questions=("Q1?", "Q2?"))
    judge = judges.OpenAIJudge("m", "http://127.0.0.1:9/v1", frames=3)
    content = judge.messages(item)[1]["content"]
    assert content[0]["text"].startswith("The 3 images are frames") and len(content) == 4
    assert judges.identity(judge, item) == "openai:m:frames=3"


def test_a_judge_that_stops_answering_stops_the_eval(tmp_path):
    items = eval_items.load(make_run(tmp_path / "run", sweep(BENCH, ("none", "vsf", "nag")), seeds=(0, 1, 2)))

    class Gone:
        name, model, prompt_version, concurrency, frames = "fake", "m", "v1", 1, 0
        calls = 0

        def ask(self, item):
            self.calls += 1
            raise judges.JudgeUnreachable("connection failed: refused")

    judge = Gone()
    with Cache(tmp_path / "cache.sqlite") as cache, pytest.raises(VsfError, match="stopped answering"):
        eval_run.judge_items(items, judge, cache)
    assert judge.calls < len(items)


# --- statistics against hand-computed values ---------------------------------------------------------------------


def test_exact_sign_and_mcnemar_tests():
    assert stats.sign_test(8, 2) == 2 * (1 + 10 + 45) / 1024 == 0.109375
    assert stats.sign_test(2, 8) == 0.109375
    assert stats.sign_test(10, 0) == 2 / 1024
    assert stats.sign_test(5, 5) == 1.0 and stats.sign_test(0, 0) == 1.0
    assert stats.sign_test(1, 0) == 1.0  # 2 * 1/2, capped


def test_bootstrap_ci_is_fixed_and_matches_the_normal_approximation():
    assert stats.bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    coin = [1, 0] * 200  # p = 0.5, n = 400: 0.5 +- 1.96 * 0.025 = [0.451, 0.549]
    lo, hi = stats.bootstrap_ci(coin)
    assert abs(lo - 0.451) < 0.01 and abs(hi - 0.549) < 0.01
    assert stats.bootstrap_ci(coin) == (lo, hi)  # a fixed RNG seed


def test_summary_and_paired_deltas_on_a_fixture():
    def row(seed, a1, a2, q, error=None):
        return {"prompt": "p", "negative": "n", "seed": seed, "answer_1": a1, "answer_2": a2,
                "both": a1 and a2, "quality": q, "error": error}

    # Baseline: the negative is absent in 2 of 10; the method flips 8 of them to absent and 2 (other) ones back.
    base = [row(s, True, s < 2, 0.8) for s in range(10)] + [row(99, None, None, None, error="timed out")]
    method = [row(s, s != 9, s >= 2, 0.7) for s in range(10)]
    s = stats.summarise(base)
    assert s["n"] == 10 and s["errors"] == 1 and s["negative"]["mean"] == 0.2 and s["quality"]["mean"] == 0.8
    d = stats.paired(method, base, eval_run.pair_key)
    assert d["pairs"] == 10
    assert d["negative"]["wins"] == 8 and d["negative"]["losses"] == 2 and d["negative"]["p"] == 0.109375
    assert d["negative"]["mean"] == pytest.approx(0.6)
    assert d["positive"]["mean"] == pytest.approx(-0.1) and d["positive"]["p"] == 1.0
    assert d["both"]["wins"] == 7 and d["both"]["losses"] == 2 and d["both"]["p"] == 2 * (1 + 9 + 36) / 512
    assert d["quality"]["mean"] == pytest.approx(-0.1) and d["quality"]["p"] == 2 / 1024


# --- baselines and the report ------------------------------------------------------------------------------------


def test_baseline_in_the_same_run_and_from_another_run_then_the_report(tmp_path, judge_server):
    judge_server.reply = lambda body, n: answer(a2=n % 3 != 0, quality=0.5 + 0.1 * (n % 4))
    run = make_run(tmp_path / "run", sweep(BENCH, ("none", "vsf", "nag")))
    result = run_eval(run, judge_server.url, "--baseline", "method=none", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["baseline"]["setting"] == "none" and [d["setting"] for d in summary["deltas"]] == ["vsf", "nag"]
    assert all(d["pairs"] == 4 for d in summary["deltas"])

    other = make_run(tmp_path / "other", sweep(BENCH, ("vsf",)))
    result = run_eval(other, judge_server.url, "--baseline", str(run), "--json")
    assert result.exit_code == 2 and "has 3 settings" in result.stderr
    baseline = make_run(tmp_path / "base", sweep(BENCH, ("none",)))
    summary = json.loads(run_eval(other, judge_server.url, "--baseline", str(baseline), "--json").stdout)
    assert summary["baseline"]["setting"] == "base: none" and summary["deltas"][0]["pairs"] == 4

    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(run), str(other), "-o", str(out), "--rows", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(out / "table.md"), str(out / "contact_sheet.png"), str(out / "tradeoff.png")]
    table = (out / "table.md").read_text()
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")]
    assert rows == ["| setting", "| run: none", "| run: vsf", "| run: nag", "| other: vsf",
                    "| setting", "| vsf", "| nag", "| setting", "| vsf"]
    assert "| run: none | 1.000 [1.000, 1.000] |" in table and "other: paired against the baseline `base: none`" in table
    from vsf_cli.eval import report

    with Image.open(out / "contact_sheet.png") as sheet:  # 2 prompts x 4 settings
        assert sheet.size == (report.CAPTION_W + 4 * (report.CELL + 8) + 8,
                              report.HEADER_H + 2 * (report.CELL + report.ANSWER_H + 8) + 8)
    with Image.open(out / "tradeoff.png") as plot:
        assert plot.size == (1000, 440)


# --- end to end on the toy model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["toy", "toy-z"])
def test_toy_batch_then_eval_with_the_exact_detector(tmp_path, model):
    import yaml

    jobs = [{"prompt": "a small house on the left", "neg": neg, "meta": {"tier": tier, "expect": {"object": "house", "negative": neg}}}
            for neg, tier in (("red", "attribute"), ("sun", "object"), ("roof", "part"))]
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump({"defaults": {"model": model}, "seeds": [0], "jobs": jobs}))
    out = tmp_path / "run"
    result = runner.invoke(app, ["batch", str(tmp_path / "jobs.yaml"), "--sweep", "method=none,vsf", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", str(out), "--json", "-q"])  # toy is the default judge for toy runs
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["judge"] == "toy" and [s["setting"] for s in summary["settings"]] == ["none", "vsf"]
    rows = results(out, "toy")
    assert len(rows) == 6 and all(r["answer_1"] is not None and 0 < r["quality"] <= 1 for r in rows)
    assert rows[0]["reasoning"].startswith("detected ")


def test_unreadable_and_truncated_images_are_per_item_errors_in_eval_and_report(tmp_path, judge_server):
    """One bad file must not stop the eval or the report: its row records why, the rest is judged, exit 3."""
    run = make_run(tmp_path / "run", sweep(BENCH), seeds=(0,))  # 4 images
    (run / "00001.png").write_bytes(b"not a png at all")
    good = (run / "00002.png").read_bytes()
    (run / "00002.png").write_bytes(good[: len(good) // 2])  # truncated
    (run / "00003.png").unlink()  # gone: not an item (the batch renders it again)
    result = run_eval(run, judge_server.url, quiet=False)
    assert result.exit_code == 3, result.output
    rows = {r["file"]: r for r in results(run)}
    assert sorted(rows) == ["00000.png", "00001.png", "00002.png"]
    assert rows["00000.png"]["error"] is None and rows["00000.png"]["answer_1"] is True
    assert rows["00001.png"]["error"] == "cannot read 00001.png: not an image"
    assert rows["00002.png"]["error"].startswith("cannot read 00002.png: ")
    assert len(judge_server.requests) == 1  # nothing unreadable was sent
    assert "2 of 3 items could not be judged" in result.stderr
    summary = json.loads((run / "eval" / "openai-judge-model" / "summary.json").read_text())
    assert summary["items"] == 3 and summary["errors"] == 2

    report = runner.invoke(app, ["report", str(run), "-o", str(tmp_path / "report")])
    assert report.exit_code == 3, report.output
    assert report.stdout.split() == [str(tmp_path / "report" / n) for n in ("table.md", "contact_sheet.png", "tradeoff.png")]
    assert "2 images could not be drawn and are marked on the contact sheet (first: 00002.png (" in report.stderr
    assert "2 items could not be judged" in report.stderr
    from vsf_cli.eval import report as report_module

    with Image.open(tmp_path / "report" / "contact_sheet.png") as sheet:  # 2 prompts x 2 settings, all tiles there
        assert sheet.size == (report_module.CAPTION_W + 2 * (report_module.CELL + 8) + 8,
                              report_module.HEADER_H + 2 * (report_module.CELL + report_module.ANSWER_H + 8) + 8)
        pixels = np.asarray(sheet.convert("RGB"))
        row_h, col_w = report_module.CELL + report_module.ANSWER_H + 8, report_module.CELL + 8
        for row, col in ((0, 1), (1, 0)):  # 00002 (sailboat, vsf) and 00001 (bicycle, none): marked grey
            y, x = report_module.HEADER_H + row * row_h + 20, report_module.CAPTION_W + col * col_w + 4 + 100
            assert tuple(pixels[y, x]) == (236, 236, 236)
        assert tuple(pixels[report_module.HEADER_H + 20, report_module.CAPTION_W + 4 + 100]) != (236, 236, 236)


def test_the_toy_judge_records_a_bad_image_and_goes_on(tmp_path):
    import yaml

    jobs = [{"prompt": "a small house", "neg": "roof", "meta": {"expect": {"object": "house", "negative": "roof"}}}]
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump({"defaults": {"model": "toy"}, "seeds": [0, 1, 2], "jobs": jobs}))
    out = tmp_path / "run"
    assert runner.invoke(app, ["batch", str(tmp_path / "jobs.yaml"), "-o", str(out), "-q"]).exit_code == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for record in records:  # as from an older vsf, without sha256: the judge itself meets the bad files
        record.pop("sha256"), record.pop("size")
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    first, second = (out / records[0]["file"]), (out / records[1]["file"])
    first.write_bytes(first.read_bytes()[:-60])  # cut inside the pixel data: "image file is truncated"
    second.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = runner.invoke(app, ["eval", str(out), "--json", "-q"])
    assert result.exit_code == 3, result.output
    rows = results(out, "toy")
    assert [r["error"] is None for r in rows] == [False, False, True]
    assert "truncated" in rows[0]["error"] and rows[1]["error"].startswith("cannot read")
    assert json.loads(result.stdout)["errors"] == 2
