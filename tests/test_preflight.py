"""Bad input is refused in one line with exit 2 before any weights load; bad output (NaN) is never written."""

import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vsf_cli.cli import app

runner = CliRunner()


@pytest.fixture
def no_load(monkeypatch, tmp_path):
    """Any model load fails the test: these errors must come before one."""
    import vsf_cli.models.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(loading, "load_pipeline", refuse)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "Error:" not in lines[0].split("error: ", 1)[1][:20]
    return lines[0]


@pytest.mark.parametrize("size", ["64", "8192"])
def test_a_size_beyond_the_position_table_is_refused(no_load, size):
    line = one_line_error(runner.invoke(app, ["gen", "a car", "--model", "toy", "--size", size]))
    assert f"{size}x{size} is larger than toy can make (at most 32 a side" in line


def test_size_limit_comes_from_the_transformer_config(no_load, sd3_dir):
    # tiny-sd3: pos_embed_max_size 96, patch 2, a 2-level VAE (factor 2): 384 pixels a side
    assert runner.invoke(app, ["gen", "a car", "--model", str(sd3_dir), "--size", "384", "--dry-run"]).exit_code == 0
    line = one_line_error(runner.invoke(app, ["gen", "a car", "--model", str(sd3_dir), "--size", "384x400"]))
    assert "384x400 is larger than" in line and "at most 384 a side" in line


def test_inpainting_a_4_channel_model_is_refused(no_load):
    Image.new("RGB", (32, 32), "red").save("i.png")
    Image.new("L", (32, 32), 255).save("m.png")
    line = one_line_error(runner.invoke(app, ["gen", "a car", "--model", "toy", "--image", "i.png", "--mask", "m.png"]))
    assert "toy cannot inpaint" in line and "has 4" in line
    # image-to-image needs no extra channels
    assert runner.invoke(app, ["gen", "a car", "--model", "toy", "--image", "i.png", "--dry-run"]).exit_code == 0


@pytest.mark.parametrize("command", ["gen", "video"])
def test_a_white_space_negative_is_refused(no_load, command):
    model = "toy" if command == "gen" else "wan"
    line = one_line_error(runner.invoke(app, [command, "a car", "--model", model, "--neg", "  \t "]))
    assert "negative prompt is empty" in line


def test_a_missing_lora_file_is_refused(no_load):
    line = one_line_error(runner.invoke(app, ["gen", "a car", "--model", "toy", "--lora", "nope.safetensors:0.5"]))
    assert line == "error: LoRA file nope.safetensors does not exist"
    line = one_line_error(runner.invoke(app, ["gen", "a car", "--model", "toy", "--lora", "weights.ckpt"]))
    assert "pickles" in line


def test_an_output_under_a_file_is_refused(no_load):
    Path("afile").write_text("not a folder")
    line = one_line_error(runner.invoke(app, ["gen", "a car", "--model", "toy", "-o", "afile/sub/x.png"]))
    assert line == "error: cannot write into afile/sub: afile is a file, not a folder"


def test_a_read_only_output_folder_is_refused(no_load):
    # Root writes through permission bits, so there the folder is made immutable, which binds root too.
    folder = no_load / "ro"
    folder.mkdir()
    lock, unlock = (["chattr", "+i", str(folder)], ["chattr", "-i", str(folder)]) if os.geteuid() == 0 else (None, None)
    if lock:
        subprocess.run(lock, check=True)
    else:
        folder.chmod(0o555)
    try:
        line = one_line_error(runner.invoke(app, ["gen", "a car", "--model", "toy", "-o", "ro/new/x.png"]))
    finally:
        if unlock:
            subprocess.run(unlock, check=True)
        folder.chmod(0o755)
    assert line == "error: cannot write into ro/new: ro is not writable"


@pytest.mark.parametrize("seed", ["-1", str(2**63), "18446744073709551621"])
def test_seeds_outside_one_range_are_refused(no_load, seed):
    line = one_line_error(runner.invoke(app, ["gen", "a car", "--model", "toy", "--seed", seed]))
    assert f"--seed {seed} is out of range; seeds are 0 to {2**63 - 1}" in line


def test_the_largest_seed_renders_and_replays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    top = str(2**63 - 1)
    assert runner.invoke(app, ["gen", "a car", "--model", "toy", "--seed", top, "-o", "a.png"]).exit_code == 0
    replay = runner.invoke(app, ["gen", "--from", "a.png", "-o", "b.png"])
    assert replay.exit_code == 0, replay.output
    assert Image.open("a.png").tobytes() == Image.open("b.png").tobytes()
    line = one_line_error(runner.invoke(app, ["gen", "a car", "--model", "toy", "--seed", top, "-n", "2"]))
    assert "goes past the largest seed" in line


@pytest.mark.parametrize("value", ["inf", "nan", "31", "-1"])
def test_guidance_scale_is_bounded(no_load, value):
    line = one_line_error(runner.invoke(app, ["gen", "a car", "--model", "toy", "--guidance-scale", value]))
    assert line.startswith("error: guidance_scale:")


def test_knobs_the_method_ignores_get_one_warning(no_load):
    result = runner.invoke(app, ["gen", "a car", "--model", "toy", "--scale", "2", "--method", "none", "--dry-run"])
    assert result.exit_code == 0
    assert result.stderr.strip() == "warning: --scale does nothing with --method none (it takes no knobs)"
    result = runner.invoke(app, ["gen", "a car", "--neg", "red", "--model", "toy", "--nag-scale", "2", "--dry-run"])
    assert result.stderr.strip() == ("warning: --nag-scale does nothing with --method vsf "
                                     "(it takes --scale, --offset, --variant, --compat)")
    quiet = runner.invoke(app, ["gen", "a car", "--neg", "red", "--model", "toy", "--scale", "2", "--dry-run"])
    assert quiet.stderr == ""


def test_a_long_prompt_gives_one_truncation_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prompt = " ".join(["word"] * 10_000)
    result = runner.invoke(app, ["gen", prompt, "--model", "toy", "--seed", "1", "-o", "long.png"])
    assert result.exit_code == 0, result.output[:500]
    lines = result.stderr.strip().splitlines()
    assert lines[1:-1] == ["warning: prompt truncated to 20 tokens (CLIP), 20 tokens (T5, max_sequence_length)"], lines
    assert len(result.stderr) < 400


def test_float16_on_the_cpu_warns_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["gen", "a car", "--model", "toy", "--dtype", "float16", "--seed", "1", "-o", "h.png"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning:") == 1 and "float16 on the CPU" in result.stderr
    assert "Pipelines loaded" not in result.stderr


FAMILIES = {"sd3": "SD3Transformer2DModel", "flux": "FluxTransformer2DModel", "wan": "WanTransformer3DModel"}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    from tiny import build_flux, build_sd3, build_wan

    root = tmp_path_factory.mktemp("nan-models")
    return {"sd3": build_sd3(root / "sd3"), "flux": build_flux(root / "flux"), "wan": build_wan(root / "wan")}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["none", "vsf", "nag", "nasa", "cfg"])
def test_a_non_finite_output_is_never_written(family_dirs, family, method, tmp_path, monkeypatch):
    """What an fp16 overflow on a GPU gives, made here by a transformer whose prediction is NaN."""
    import diffusers

    cls = getattr(diffusers, FAMILIES[family])
    forward = cls.forward

    def nan_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else type(out)(sample=out.sample * float("nan"))

    monkeypatch.setattr(cls, "forward", nan_forward)
    monkeypatch.chdir(tmp_path)
    video = family == "wan"
    args = ["video" if video else "gen", "a red car", "-q", "--model", str(family_dirs[family]), "--steps", "2", "--seed", "1",
            "--size", "32", "-o", "out.mp4" if video else "out.png"]
    args += ["--frames", "5", "--trim-start", "0"] if video else []
    args += ["--neg", "wheels", "--method", method] if method != "none" else []
    line = one_line_error(runner.invoke(app, args), code=1)
    assert "NaN or inf" in line and "float16" in line
    assert os.listdir(tmp_path) == []
