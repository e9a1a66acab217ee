"""`vsf gen` end to end on a tiny local model: outputs, metadata round trip, --from, precedence and error exits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vsf_cli.cli import app
from vsf_cli.render.metadata import read_metadata

runner = CliRunner()


@pytest.fixture
def gen(sd3_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def run(*args, model=True):
        # defaults first, so a test's own flags come later and win
        base = ["gen", "--size", "32", "--steps", "2"] + (["--model", str(sd3_dir)] if model else [])
        return runner.invoke(app, base + list(args))

    return run


def pixels(path):
    return np.asarray(Image.open(path))


def test_writes_png_with_metadata_and_prints_only_paths(gen, tmp_path):
    result = gen("a red bike", "--neg", "wheels", "--seed", "7", "-o", "imgs/{seed}_{method}.png")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == os.path.join("imgs", "7_vsf.png")
    meta = read_metadata(tmp_path / "imgs/7_vsf.png")
    assert meta["prompt"] == "a red bike" and meta["negative"] == "wheels" and meta["seed"] == 7
    assert (meta["method"], meta["scale"], meta["offset"], meta["steps"]) == ("vsf", 3.5, 0.1, 2)
    text = Image.open(tmp_path / "imgs/7_vsf.png").text["parameters"]
    assert "Negative prompt: wheels" in text and "Guidance method: vsf, VSF scale: 3.5, VSF offset: 0.1" in text


def test_a_repeated_neg_is_several_negatives_recorded_and_replayed(gen, tmp_path):
    result = gen("a red bike", "--neg", "wheels", "--neg", "sun", "--seed", "7", "-o", "two.png")
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "two.png")
    assert meta["negative"] == ["wheels", "sun"]
    assert "Negative prompt: wheels, sun" in Image.open(tmp_path / "two.png").text["parameters"]
    replay = runner.invoke(app, ["gen", "--from", "two.png", "-o", "again.png"])
    assert replay.exit_code == 0, replay.output
    assert np.array_equal(pixels("two.png"), pixels("again.png"))
    assert read_metadata(tmp_path / "again.png")["negative"] == ["wheels", "sun"]
    assert gen("a red bike", "--neg", "wheels sun", "--seed", "7", "-o", "one.png").exit_code == 0
    assert not np.array_equal(pixels("two.png"), pixels("one.png"))
    assert gen("a red bike", "--neg", "wheels", "--seed", "7", "-o", "single.png").exit_code == 0
    assert read_metadata(tmp_path / "single.png")["negative"] == "wheels"  # one --neg stays a string, as before
    blank = gen("a red bike", "--neg", "wheels", "--neg", " ", "-o", "blank.png")
    assert blank.exit_code == 2 and "a negative prompt is empty" in blank.stderr


def test_vsf_changes_the_image_and_none_ignores_the_negative(gen, tmp_path):
    assert gen("a red bike", "--neg", "wheels", "--seed", "1", "-o", "vsf.png").exit_code == 0
    assert gen("a red bike", "--neg", "wheels", "--method", "none", "--seed", "1", "-o", "none.png").exit_code == 0
    assert gen("a red bike", "--seed", "1", "-o", "plain.png").exit_code == 0
    assert np.array_equal(pixels("none.png"), pixels("plain.png"))
    assert not np.array_equal(pixels("vsf.png"), pixels("plain.png"))


def test_json_lines_and_seed_expansion(gen):
    result = gen("a cat", "--neg", "red", "--seed", "10", "-n", "3", "--json", "-o", "{index}_{seed}.png")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seed"] for r in rows] == [10, 11, 12]
    assert [r["path"] for r in rows] == ["0_10.png", "1_11.png", "2_12.png"]
    assert all(r["version"] == __import__("vsf_cli").__version__ for r in rows)


def test_lora_flag_changes_the_image_and_is_recorded(gen, tiny_lora):
    assert gen("a cat", "--neg", "red", "--seed", "1", "-o", "base.png").exit_code == 0
    result = gen("a cat", "--neg", "red", "--seed", "1", "--lora", f"{tiny_lora}:0.8", "-o", "lora.png")
    assert result.exit_code == 0, result.output
    assert not np.array_equal(pixels("base.png"), pixels("lora.png"))
    assert read_metadata("lora.png")["lora"] == [f"{tiny_lora}:0.8"]
    assert f"Lora: {tiny_lora}:0.8" in Image.open("lora.png").text["parameters"]


def test_random_seeds_are_recorded(gen):
    rows = [json.loads(x) for x in gen("a cat", "--seeds", "2", "--json", "-o", "{seed}.png").stdout.splitlines()]
    assert len({r["seed"] for r in rows}) == 2
    assert all(read_metadata(r["path"])["seed"] == r["seed"] for r in rows)


def test_from_replays_and_flags_win(gen, tmp_path):
    assert gen("a red bike", "--neg", "wheels", "--seed", "4", "--scale", "2.5", "-o", "a.png").exit_code == 0
    replay = runner.invoke(app, ["gen", "--from", "a.png", "-o", "b.png"])
    assert replay.exit_code == 0, replay.output
    assert np.array_equal(pixels("a.png"), pixels("b.png"))
    changed = runner.invoke(app, ["gen", "--from", "a.png", "--scale", "1", "-o", "c.png"])
    assert changed.exit_code == 0
    assert read_metadata(tmp_path / "c.png")["scale"] == 1.0
    assert read_metadata(tmp_path / "c.png")["seed"] == 4
    assert not np.array_equal(pixels("a.png"), pixels("c.png"))


def test_precedence_env_above_file_below_flags(gen, monkeypatch):
    monkeypatch.setenv("VSF_SCALE", "2")
    rows = gen("a cat", "--neg", "red", "--seed", "1", "--dry-run", "--json").stdout.splitlines()
    assert json.loads(rows[0])["scale"] == 2.0
    rows = gen("a cat", "--neg", "red", "--seed", "1", "--scale", "3", "--dry-run", "--json").stdout.splitlines()
    assert json.loads(rows[0])["scale"] == 3.0


def test_dry_run_loads_nothing(gen, monkeypatch):
    import vsf_cli.models.loading as loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("dry run loaded a model"))
    result = gen("a cat", "--neg", "red", "--seed", "1", "--dry-run", "--json")
    assert result.exit_code == 0
    row = json.loads(result.stdout)
    assert row["path"] == "out/a-cat_1.png" and row["negative"] == "red"


def test_never_overwrites_without_flag(gen):
    assert gen("a cat", "--seed", "1", "-o", "x.png").exit_code == 0
    before = pixels("x.png")
    again = gen("a cat", "--neg", "red", "--seed", "1", "-o", "x.png")
    assert again.exit_code == 1 and "--overwrite" in again.stderr
    assert np.array_equal(before, pixels("x.png"))
    assert gen("a cat", "--neg", "red", "--seed", "1", "-o", "x.png", "--overwrite").exit_code == 0
    assert not np.array_equal(before, pixels("x.png"))


def test_prompt_cannot_steer_the_output_out_of_its_folder(gen, tmp_path):
    result = gen("../../evil", "--seed", "1", "-o", "out/{slug}.png", "--dry-run", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["path"].startswith("out/")


@pytest.mark.parametrize("args, message", [
    (["a cat", "--size", "33"], "multiple of 16"),
    (["a cat", "--size", "big"], "WIDTHxHEIGHT"),
    (["a cat", "--method", "vsf"], "needs a negative prompt"),
    (["a cat", "--neg", "red", "--scale", "99"], "scale"),
    (["a cat", "--neg", "red", "--guidance-scale", "5"], "guidance-scale"),
    (["a cat", "-o", "x.jpg"], ".png"),
    (["a cat", "--method", "magic"], "method"),
    (["a cat", "--seed", "1", "--seeds", "2"], "--seeds"),
    (["--neg", "red"], "PROMPT"),
])
def test_usage_errors_exit_2_with_one_line(gen, args, message):
    result = gen(*args, "--dry-run")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_unknown_model_is_a_usage_error(gen):
    result = gen("a cat", "--model", "no-such-model", model=False)
    assert result.exit_code == 2 and "unknown model" in result.stderr


def test_gated_model_exits_4(gen, monkeypatch):
    import vsf_cli.models.loading as loading
    from vsf_cli.errors import GatedModelError

    def gated(*a, **k):
        raise GatedModelError("org/x is gated: accept the license at https://huggingface.co/org/x")

    monkeypatch.setattr(loading, "load_pipeline", gated)
    result = gen("a cat", "--neg", "red")
    assert result.exit_code == 4 and "accept the license" in result.stderr


def test_out_of_memory_is_one_line_suggesting_offload(gen, monkeypatch):
    import torch

    import vsf_cli.models.loading as loading

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loading, "load_pipeline", oom)
    result = gen("a cat", "--neg", "red", "-q")
    assert result.exit_code == 1 and "--offload" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_interrupt_exits_130_and_leaves_no_partial_file(gen, tmp_path, monkeypatch):
    from diffusers import StableDiffusion3Pipeline

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(StableDiffusion3Pipeline, "__call__", interrupted)
    result = gen("a cat", "--neg", "red", "-o", "o/{seed}.png")
    assert result.exit_code == 130
    assert not list(tmp_path.rglob("*.png*"))


def test_interrupt_while_saving_leaves_no_partial_file(gen, tmp_path, monkeypatch):
    from PIL import Image as PILImage

    def interrupted_save(self, *a, **k):
        open(a[0], "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(PILImage.Image, "save", interrupted_save)
    result = gen("a cat", "--neg", "red", "-o", "o/{seed}.png")
    assert result.exit_code == 130
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_real_subprocess_on_tiny_model(sd3_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vsf_cli", "gen", "a red bike", "--neg", "wheels", "--model", str(sd3_dir),
           "--size", "32", "--steps", "2", "--seed", "3"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "out/a-red-bike_3.png\n"
    assert (tmp_path / "out/a-red-bike_3.png").is_file()
    assert "wrote out/a-red-bike_3.png" in done.stderr and "Traceback" not in done.stderr
    offline = subprocess.run([sys.executable, "-m", "vsf_cli", "gen", "a cat", "--neg", "red", "--offline",
                              "--model", "sd35-large-turbo"], cwd=tmp_path, capture_output=True, text=True,
                             env={**env, "HF_HOME": str(tmp_path / "empty-hf-home")}, timeout=300)
    assert offline.returncode == 5, offline.stderr
    assert "--offline" in offline.stderr and "Traceback" not in offline.stderr


@pytest.mark.parametrize("args", [["--help"], ["gen", "--help"], ["video", "--help"], ["batch", "run", "--help"],
                                  ["ui", "--help"]])
def test_help_imports_no_torch(args):
    """Help screens run in a fresh interpreter and must not pay for torch, diffusers or gradio."""
    code = ("import sys\nfrom vsf_cli.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    code = e.code\nprint(code, any(m in sys.modules for m in ('torch', 'diffusers', 'gradio')), "
            "file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert done.stderr.strip().splitlines()[-1] == "0 False", done.stderr
    assert "Usage" in done.stdout


def test_a_reader_that_leaves_early_stops_the_command_quietly(tmp_path):
    """`vsf ... | head -1`: no traceback and no error line, and the status a SIGPIPE gives (141)."""
    reader = subprocess.Popen([sys.executable, "-m", "vsf_cli", "gen", "a car", "--neg", "wheels", "--model", "toy",
                               "--seeds", "20000", "--dry-run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=tmp_path)
    assert reader.stdout.readline().startswith(b"out/")
    reader.stdout.close()  # the reader goes away while vsf still has thousands of lines to print
    assert reader.wait(timeout=60) == 141
    assert reader.stderr.read() == b""
