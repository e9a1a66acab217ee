"""Tests for the model registry, pipeline loading (tiny local SD3, LoRA, hub errors) and `vsf models` / `vsf env`."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vsf_cli.cli import app
from vsf_cli.errors import GatedModelError, OfflineError, UsageError, VsfError
from vsf_cli.models import loading
from vsf_cli.models.loading import is_cached, load_pipeline, parse_lora, place
from vsf_cli.models.registry import DEFAULT_MODEL, MODELS, ModelSpec, resolve

TURBO = "stabilityai/stable-diffusion-3.5-large-turbo"


@pytest.fixture(scope="module")
def tiny_sd3(sd3_dir) -> Path:
    """conftest's tiny SD3 folder, built once with tiny.build_sd3."""
    return sd3_dir


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, so results never depend on what this machine has downloaded."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def fake_cached_repo(cache: Path, repo_id: str) -> None:
    """Lay out a repo's model_index.json the way the hub cache stores it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')


def run_one_step(pipe, seed: int = 0) -> np.ndarray:
    return pipe(
        "a red car", num_inference_steps=1, height=32, width=32, guidance_scale=0.0, max_sequence_length=16,
        output_type="np", generator=torch.Generator().manual_seed(seed),
    ).images


# --- registry -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alias,hub_id,steps,guidance", [
    ("sd35-large-turbo", TURBO, 8, 0.0),
    ("sd35-large", "stabilityai/stable-diffusion-3.5-large", 28, 1.0),
    ("sd35-medium", "stabilityai/stable-diffusion-3.5-medium", 28, 1.0),
    ("sd3-medium", "stabilityai/stable-diffusion-3-medium-diffusers", 28, 1.0),
])
def test_resolve_alias(alias, hub_id, steps, guidance):
    spec = resolve(alias)
    assert (spec.alias, spec.family, spec.hub_id, spec.gated) == (alias, "sd3", hub_id, True)
    assert (spec.steps, spec.guidance_scale, spec.width, spec.height) == (steps, guidance, 1024, 1024)
    assert (spec.scale, spec.offset, spec.max_sequence_length, spec.loras) == (3.5, 0.1, 256, ())
    assert spec.note and "\n" not in spec.note
    assert resolve(alias.upper()) is spec


def test_default_model_and_specs_are_frozen():
    assert DEFAULT_MODEL == "sd35-large-turbo" and DEFAULT_MODEL in MODELS
    with pytest.raises(Exception):
        MODELS[DEFAULT_MODEL].steps = 1  # type: ignore[misc]


def test_resolve_local_folder_takes_turbo_defaults(tiny_sd3):
    spec = resolve(str(tiny_sd3))
    turbo = MODELS["sd35-large-turbo"]
    assert (spec.alias, spec.hub_id, spec.family, spec.gated) == (str(tiny_sd3), None, "sd3", False)
    assert (spec.steps, spec.scale, spec.offset, spec.guidance_scale) == (turbo.steps, turbo.scale, turbo.offset, 0.0)
    assert spec.source == str(tiny_sd3)


def test_resolve_local_folder_img2img_class(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusion3Img2ImgPipeline"}')
    assert resolve(str(tmp_path)).family == "sd3"


@pytest.mark.parametrize("content,needle", [
    (None, "model_index.json"),
    ('{"_class_name": "CogVideoXPipeline"}', "supported families: flux, "),
    ("not json", "cannot read"),
])
def test_resolve_bad_local_folder(tmp_path, content, needle):
    if content is not None:
        (tmp_path / "model_index.json").write_text(content)
    with pytest.raises(UsageError, match=needle) as e:
        resolve(str(tmp_path))
    assert e.value.exit_code == 2


def test_resolve_file_is_refused(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(UsageError, match="is a file"):
        resolve(str(f))


def test_resolve_hub_ids():
    assert resolve("stabilityai/stable-diffusion-3.5-large") is MODELS["sd35-large"]
    spec = resolve("someone/stable-diffusion-3.5-large-finetune")
    assert (spec.alias, spec.hub_id, spec.family, spec.gated) == (spec.hub_id, "someone/stable-diffusion-3.5-large-finetune", "sd3", False)
    assert spec.steps == MODELS["sd35-large-turbo"].steps
    with pytest.raises(UsageError, match="alias.*local diffusers folder"):
        resolve("someone/some-video-model")


@pytest.mark.parametrize("name", ["nope", "sd4", "a/b/c", ""])
def test_resolve_unknown(name):
    with pytest.raises(UsageError, match="sd35-large-turbo, sd35-large, sd35-medium, sd3-medium") as e:
        resolve(name)
    assert e.value.exit_code == 2
    if name:
        assert f"unknown model {name}" in str(e.value)


# --- loading --------------------------------------------------------------------------------------------------------

def test_load_tiny_local_pipeline_runs(tiny_sd3):
    from diffusers import StableDiffusion3Pipeline

    pipe = load_pipeline(resolve(str(tiny_sd3)), device="cpu")
    assert type(pipe) is StableDiffusion3Pipeline
    assert pipe.device.type == "cpu" and pipe.transformer.dtype == torch.float32
    image = run_one_step(pipe)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_load_auto_device_and_explicit_dtype(tiny_sd3):
    pipe = load_pipeline(resolve(str(tiny_sd3)), dtype="bfloat16")
    assert pipe.transformer.dtype == torch.bfloat16
    if not torch.cuda.is_available():
        assert pipe.device.type in ("cpu", "mps")


@pytest.mark.parametrize("kwargs,needle", [
    ({"dtype": "fp8"}, "--dtype"),
    ({"offload": "disk"}, "--offload"),
    ({"offload": "model", "device": "cpu"}, "accelerator"),
    ({"device": "banana"}, "--device"),
    ({"loras": ["x.safetensors:abc"]}, "LoRA scale"),
])
def test_load_usage_errors(tiny_sd3, kwargs, needle):
    with pytest.raises(UsageError, match=needle):
        load_pipeline(resolve(str(tiny_sd3)), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_cuda_without_cuda_is_usage_error(tiny_sd3):
    with pytest.raises(UsageError, match="no CUDA device"):
        load_pipeline(resolve(str(tiny_sd3)), device="cuda")


def test_unsupported_family_is_usage_error(tiny_sd3):
    import dataclasses

    spec = dataclasses.replace(resolve(str(tiny_sd3)), family="cogvideo")
    with pytest.raises(UsageError, match="not supported yet"):
        load_pipeline(spec)


class _Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append((name, a, k))


@pytest.mark.parametrize("offload,call", [
    ("none", ("to", ("cuda",), {})),
    ("model", ("enable_model_cpu_offload", (), {"device": "cuda"})),
    ("sequential", ("enable_sequential_cpu_offload", (), {"device": "cuda"})),
])
def test_place_dispatches_offload(offload, call):
    pipe = _Recorder()
    place(pipe, "cuda", offload)
    assert pipe.calls == [call]


# --- LoRA -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("style.safetensors", ("style.safetensors", 1.0)),
    ("style.safetensors:0.5", ("style.safetensors", 0.5)),
    ("style.safetensors:-1e-1", ("style.safetensors", -0.1)),
    ("org/name", ("org/name", 1.0)),
    ("org/name:0.7", ("org/name", 0.7)),
    ("some:dir/lora.safetensors", ("some:dir/lora.safetensors", 1.0)),
    ("some:dir/lora.safetensors:2", ("some:dir/lora.safetensors", 2.0)),
])
def test_parse_lora(text, expected):
    assert parse_lora(text) == expected


@pytest.mark.parametrize("text", ["style.safetensors:abc", "org/name:big", "style.safetensors:", "x:nan", "x:inf", ":0.5"])
def test_parse_lora_bad(text):
    with pytest.raises(UsageError):
        parse_lora(text)


def test_parse_lora_existing_file_with_colon(tmp_path):
    f = tmp_path / "a:b.safetensors"
    f.write_bytes(b"")
    assert parse_lora(str(f)) == (str(f), 1.0)


def test_lora_changes_output_and_scale_zero_is_base(tiny_sd3, tiny_lora):
    spec = resolve(str(tiny_sd3))
    base = run_one_step(load_pipeline(spec, device="cpu"))
    half_pipe = load_pipeline(spec, device="cpu", loras=[f"{tiny_lora}:0.5"])
    assert half_pipe.get_list_adapters() == {"transformer": ["lora0"]}
    half = run_one_step(half_pipe)
    full = run_one_step(load_pipeline(spec, device="cpu", loras=[str(tiny_lora.parent)]))  # a folder, scale 1
    zero = run_one_step(load_pipeline(spec, device="cpu", loras=[f"{tiny_lora}:0"]))
    assert np.abs(half - base).max() > 1e-4
    assert np.abs(full - half).max() > 1e-4
    np.testing.assert_allclose(zero, base, atol=1e-6)


def test_two_loras_get_their_own_adapters(tiny_sd3, tiny_lora):
    pipe = load_pipeline(resolve(str(tiny_sd3)), device="cpu", loras=[f"{tiny_lora}:0.3", f"{tiny_lora}:0.2"])
    assert pipe.get_active_adapters() == ["lora0", "lora1"]


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_pickle_lora_is_refused(tiny_sd3, tmp_path, suffix):
    f = tmp_path / f"lora{suffix}"
    f.write_bytes(b"not really a pickle")
    with pytest.raises(UsageError, match="pickle"):
        load_pipeline(resolve(str(tiny_sd3)), loras=[str(f)])


def test_lora_that_matches_nothing_is_one_line_error(tiny_sd3, tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "other.safetensors"
    save_file({"transformer.nope.lora_A.weight": torch.zeros(2, 4), "transformer.nope.lora_B.weight": torch.zeros(4, 2)}, f)
    with pytest.raises(VsfError, match="cannot load LoRA") as e:
        load_pipeline(resolve(str(tiny_sd3)), loras=[str(f)])
    assert "\n" not in str(e.value)


def test_lora_that_is_nothing_is_usage_error(tiny_sd3):
    with pytest.raises(UsageError, match="not a .safetensors file, a folder or a hub id"):
        load_pipeline(resolve(str(tiny_sd3)), loras=["./missing/thing"])


def test_missing_lora_file_is_usage_error(tiny_sd3):
    with pytest.raises(UsageError, match="does not exist"):
        load_pipeline(resolve(str(tiny_sd3)), loras=["./missing.safetensors:0.5"])


def test_hub_lora_errors_name_the_lora_repo(tiny_sd3, monkeypatch):
    from diffusers import StableDiffusion3Pipeline

    def load_lora_weights(self, *args, **kwargs):
        raise _hub_exception("gated")

    monkeypatch.setattr(StableDiffusion3Pipeline, "load_lora_weights", load_lora_weights)
    with pytest.raises(GatedModelError) as e:
        load_pipeline(resolve(str(tiny_sd3)), device="cpu", loras=["someone/gated-lora:0.8"])
    _assert_gated(e, "someone/gated-lora")


def test_hub_lora_offline_not_cached(tiny_sd3, restore_offline_state, hub_cache):
    with pytest.raises(OfflineError, match="LoRA someone/style-lora is not in the local cache"):
        load_pipeline(resolve(str(tiny_sd3)), device="cpu", offline=True, loras=["someone/style-lora"])


# --- hub errors -----------------------------------------------------------------------------------------------------

def _response(status: int):
    from huggingface_hub.utils import httpx

    return httpx.Response(status, request=httpx.Request("GET", f"https://huggingface.co/api/models/{TURBO}"))


def _hub_exception(kind: str) -> Exception:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )
    from huggingface_hub.utils import httpx

    return {
        "gated": lambda: GatedRepoError("403 Client Error. Cannot access gated repo", response=_response(403)),
        "401": lambda: HfHubHTTPError("401 Client Error", response=_response(401)),
        "403": lambda: HfHubHTTPError("403 Client Error", response=_response(403)),
        "notfound401": lambda: RepositoryNotFoundError("401 Client Error. Repository Not Found", response=_response(401)),
        "notfound404": lambda: RepositoryNotFoundError("404 Client Error. Repository Not Found", response=_response(404)),
        "server": lambda: HfHubHTTPError("500 Server Error", response=_response(500)),
        "local": lambda: LocalEntryNotFoundError("Cannot find the requested files in the disk cache"),
        "offline": lambda: OfflineModeIsEnabled("offline mode is enabled"),
        "connect": lambda: httpx.ConnectError("[Errno -2] Name or service not known"),
    }[kind]()


def _assert_gated(e: pytest.ExceptionInfo, hub_id: str = TURBO) -> None:
    assert type(e.value) is GatedModelError and e.value.exit_code == 4
    msg = str(e.value)
    for needle in (f"https://huggingface.co/{hub_id}", "accept the license", "hf auth login", "HF_TOKEN"):
        assert needle in msg
    assert "\n" not in msg


@pytest.fixture
def no_network(monkeypatch, hub_cache):
    """Let diffusers' real download code run against an empty cache, with the hub calls replaced."""
    import diffusers.pipelines.pipeline_utils as pu
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # an online machine whose hub calls fail as told
    monkeypatch.setattr(pu, "_resolve_revision", lambda name, revision=None, **kw: revision)

    def set_model_info_error(kind: str) -> None:
        def model_info(*args, **kwargs):
            raise _hub_exception(kind)
        monkeypatch.setattr(pu, "model_info", model_info)

    return set_model_info_error


@pytest.mark.parametrize("kind", ["gated", "401", "403", "notfound401"])
def test_gated_through_diffusers_retry(no_network, kind):
    """diffusers catches the hub error, retries from the cache, and raises an OSError from the first error."""
    no_network(kind)
    with pytest.raises(GatedModelError) as e:
        load_pipeline(MODELS["sd35-large-turbo"], device="cpu")
    _assert_gated(e)
    assert isinstance(e.value.__cause__, OSError)


def test_not_found_through_diffusers_retry(no_network):
    no_network("notfound404")
    with pytest.raises(UsageError, match="was not found on the hub") as e:
        load_pipeline(resolve("someone/stable-diffusion-3-nothing"), device="cpu")
    assert e.value.exit_code == 2


def test_network_error_through_diffusers_retry(no_network):
    no_network("connect")
    with pytest.raises(VsfError, match="cannot reach huggingface.co") as e:
        load_pipeline(MODELS["sd35-large-turbo"], device="cpu")
    assert type(e.value) is VsfError and e.value.exit_code == 1 and "\n" not in str(e.value)


@pytest.mark.parametrize("kind,wrapped,expected,code", [
    ("gated", False, GatedModelError, 4),
    ("gated", True, GatedModelError, 4),
    ("403", False, GatedModelError, 4),
    ("notfound401", False, GatedModelError, 4),  # a gated entry: the 401 means "not logged in"
    ("server", False, VsfError, 1),
    ("connect", True, VsfError, 1),
    ("offline", True, OfflineError, 5),
])
def test_hub_errors_raised_directly(monkeypatch, kind, wrapped, expected, code):
    from diffusers import StableDiffusion3Pipeline

    def from_pretrained(*args, **kwargs):
        error = _hub_exception(kind)
        if not wrapped:
            raise error
        raise OSError("Cannot load model: not cached and the hub failed") from error

    monkeypatch.setattr(StableDiffusion3Pipeline, "from_pretrained", from_pretrained)
    with pytest.raises(expected) as e:
        load_pipeline(MODELS["sd35-large-turbo"], device="cpu")
    assert type(e.value) is expected and e.value.exit_code == code and "\n" not in str(e.value)
    if expected is GatedModelError:
        _assert_gated(e)


def test_not_found_on_unknown_repo_mentions_login_for_401(monkeypatch):
    from diffusers import StableDiffusion3Pipeline

    def from_pretrained(*args, **kwargs):
        raise _hub_exception("notfound401")

    monkeypatch.setattr(StableDiffusion3Pipeline, "from_pretrained", from_pretrained)
    with pytest.raises(UsageError, match="not found.*hf auth login"):
        load_pipeline(resolve("someone/stable-diffusion-3-private"), device="cpu")


def test_unrelated_errors_pass_through(monkeypatch):
    from diffusers import StableDiffusion3Pipeline

    def from_pretrained(*args, **kwargs):
        raise ValueError("a bug, not the hub")

    monkeypatch.setattr(StableDiffusion3Pipeline, "from_pretrained", from_pretrained)
    with pytest.raises(ValueError, match="a bug"):
        load_pipeline(MODELS["sd35-large-turbo"], device="cpu")


def test_errors_become_exit_codes(monkeypatch):
    import typer

    from vsf_cli.cli.common import errors_to_exit_codes

    with pytest.raises(typer.Exit) as e, errors_to_exit_codes():
        raise loading.hub_error(_hub_exception("gated"), TURBO)
    assert e.value.exit_code == 4


# --- offline (real: nothing monkeypatched in diffusers) ------------------------------------------------------------

@pytest.fixture
def restore_offline_state(monkeypatch):
    """set_offline() changes the process environment and huggingface_hub's flag; put both back afterwards."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return constants


def test_offline_flag_uncached_hub_id_is_offline_error(restore_offline_state, hub_cache):
    with pytest.raises(OfflineError) as e:
        load_pipeline(MODELS["sd35-large-turbo"], device="cpu", offline=True)
    assert e.value.exit_code == 5
    assert str(e.value) == (
        f"{TURBO} is not in the local cache and --offline is set; run once online or pass a local folder"
    )
    assert os.environ["HF_HUB_OFFLINE"] == "1" and restore_offline_state.HF_HUB_OFFLINE is True


def test_hf_hub_offline_env_alone_is_offline_error(restore_offline_state, hub_cache):
    """Without --offline, diffusers still asks the hub first; the hub's session refuses it without a connection."""
    restore_offline_state.HF_HUB_OFFLINE = True
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE is set"):
        load_pipeline(MODELS["sd35-large-turbo"], device="cpu")


def test_offline_local_folder_still_loads(restore_offline_state, tiny_sd3):
    assert load_pipeline(resolve(str(tiny_sd3)), device="cpu", offline=True) is not None


def test_set_offline_before_import_in_a_fresh_process(tmp_path):
    """The documented order: set_offline() first, then diffusers reads HF_HUB_OFFLINE at import."""
    script = textwrap.dedent("""
        import sys
        from vsf_cli.models.loading import set_offline
        set_offline(True)
        assert "diffusers" not in sys.modules and "torch" not in sys.modules
        from vsf_cli.errors import OfflineError
        from vsf_cli.models.loading import load_pipeline
        from vsf_cli.models.registry import resolve
        import huggingface_hub.constants as c
        assert c.HF_HUB_OFFLINE
        try:
            load_pipeline(resolve("sd35-large-turbo"), device="cpu", offline=True)
        except OfflineError as e:
            print("OK", e.exit_code, e)
    """)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE") and k not in ("HF_HUB_CACHE", "HF_TOKEN")}
    env["HF_HOME"] = str(tmp_path / "hf")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"OK 5 {TURBO} is not in the local cache"), out.stdout + out.stderr


# --- cache ------------------------------------------------------------------------------------------------------------

def test_is_cached(hub_cache):
    assert not is_cached(TURBO)
    fake_cached_repo(hub_cache, TURBO)
    assert is_cached(TURBO)
    assert not is_cached("stabilityai/stable-diffusion-3.5-large")
    assert not is_cached("not a repo id")


# --- CLI --------------------------------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_models_table(hub_cache):
    fake_cached_repo(hub_cache, TURBO)
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for spec in MODELS.values():
        assert spec.alias in result.stdout and (spec.hub_id or "(shipped)") in result.stdout
    turbo_row = next(line for line in result.stdout.splitlines() if "sd35-large-turbo" in line)
    assert "yes" in turbo_row and "8" in turbo_row and "1024x1024" in turbo_row and "3.5" in turbo_row


def test_cli_models_json(hub_cache):
    fake_cached_repo(hub_cache, TURBO)
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["alias"] for r in rows] == list(MODELS)
    by_alias = {r["alias"]: r for r in rows}
    assert by_alias["sd35-large-turbo"]["cached"] is True and by_alias["sd35-large"]["cached"] is False
    assert by_alias["sd35-large-turbo"]["default"] is True
    assert set(ModelSpec.__dataclass_fields__) <= set(by_alias["sd35-medium"])


def test_cli_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    result = runner.invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    for key in ("python", "vsf", "torch", "diffusers", "transformers", "accelerate", "peft", "huggingface_hub", "cuda"):
        assert key in result.stdout
    assert "hf_secret_value_123" not in result.output


def test_cli_env_json(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["torch"] == torch.__version__ and info["hf_token_env"] is True
    assert info["cuda"] == torch.cuda.is_available()
    assert "hf_secret_value_123" not in result.output
    monkeypatch.delenv("HF_TOKEN")
    assert json.loads(runner.invoke(app, ["env", "--json"]).stdout)["hf_token_env"] is False


def test_cli_env_reports_the_torch_build_tag(monkeypatch):
    # pip's metadata says "2.14.1" for a build whose torch.__version__ is "2.14.1+cu130"; a bug report needs the tag
    monkeypatch.setattr(torch, "__version__", "9.9.9+cu999")
    assert json.loads(runner.invoke(app, ["env", "--json"]).stdout)["torch"] == "9.9.9+cu999"
