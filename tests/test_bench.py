"""The benchmark runs on CPU at tiny shapes and reports every field; timings are never asserted here."""

import json

from vsf_cli import bench


def test_bench_reports_every_method_and_field(capsys, monkeypatch):
    monkeypatch.setattr(bench, "cold_start", lambda repeats=5: 0.123)
    bench.main(["--blocks", "1", "--size", "64", "--repeats", "1", "--warmup", "0", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert {"model", "blocks", "size", "image_tokens", "text_tokens", "negative_tokens", "device", "dtype",
            "attention_backend", "versions", "rows", "cold_start_help_s"} <= set(result)
    assert (result["blocks"], result["image_tokens"], result["attention_backend"]) == (1, 16, "cpu flash")
    assert [r["method"] for r in result["rows"]] == list(bench.METHODS)
    for row in result["rows"]:
        assert row["step_ms"] > 0 and row["ratio"] > 0 and len(row["spread_ms"]) == 2
    assert result["rows"][0]["ratio"] == 1.0
    assert "| vsf |" in bench.table(result)


def test_cold_start_runs_the_real_cli():
    assert bench.cold_start(repeats=1) > 0


def test_attention_only_rows():
    rows = bench.attention_only(image_tokens=32, heads=2, repeats=1)
    assert [r["method"] for r in rows] == ["none", "vsf", "vsf-dense"]
    assert all(r["ms"] > 0 for r in rows) and rows[0]["ratio"] == 1.0


def test_cross_attention_only_rows():
    rows = bench.cross_attention_only(image_tokens=32, heads=2, head_dim=8, context=24, repeats=1)
    assert [r["method"] for r in rows] == ["none", "vsf", "vsf-dense"]
    assert all(r["ms"] > 0 for r in rows) and rows[0]["ratio"] == 1.0
