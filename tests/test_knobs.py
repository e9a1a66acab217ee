"""Method knobs are declared once, as their method's pydantic field: settings, flags and help are built from it."""

import json
import re
from typing import Literal

import pytest
import typer
from annotated_types import Ge, Le
from pydantic import Field
from typer.testing import CliRunner

from vsf_cli import guidance
from vsf_cli.batch import plan
from vsf_cli.cli import app
from vsf_cli.cli import options
from vsf_cli.guidance.base import Method
from vsf_cli.models.registry import MODELS
from vsf_cli.settings import METHOD_SETTINGS, GenSettings

runner = CliRunner()
METHOD_CLASSES = {name: guidance._method_class(name) for name in guidance.METHODS}
# Each command's help, and the model whose numbers its model-dependent defaults name.
COMMANDS = {("gen",): "sd35-large-turbo", ("video",): "wan-1.3b", ("batch", "run"): "sd35-large-turbo"}


def helps(*path: str) -> dict[str, str]:
    """A command's options as flag -> help, read from the click command typer builds."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {opt: param.help for param in command.params for opt in getattr(param, "opts", [])}


def bounds(field) -> dict[str, float]:
    return {attr: getattr(m, attr) for m in field.metadata for attr in ("ge", "gt", "le", "lt")
            if getattr(m, attr, None) is not None}


def test_settings_carry_exactly_the_methods_fields():
    declared = {name: field for cls in METHOD_CLASSES.values() for name, field in cls.model_fields.items()}
    assert set(METHOD_SETTINGS) == set(declared) and len(METHOD_SETTINGS) == len(set(METHOD_SETTINGS))
    for name, field in declared.items():
        setting = GenSettings.model_fields[name]
        assert setting.annotation == field.annotation | None  # None: a knob the chosen method does not take
        assert (setting.default, setting.metadata, setting.description) == (field.default, field.metadata,
                                                                           field.description), name
    # The field order is the metadata's key order: the knobs sit between `method` and `steps`.
    fields = list(GenSettings.model_fields)
    assert fields[fields.index("method") + 1:fields.index("steps")] == list(METHOD_SETTINGS)


def test_a_settings_range_is_the_methods_range():
    GenSettings(prompt="a", nag_scale=20)
    with pytest.raises(ValueError, match="less than or equal to 20"):
        GenSettings(prompt="a", nag_scale=20.5)
    with pytest.raises(ValueError, match="greater than 1"):
        GenSettings(prompt="a", cfg_scale=1)
    assert GenSettings(prompt="a", offset=float("inf")).offset == float("inf")


@pytest.mark.parametrize("path", COMMANDS)
def test_every_knobs_help_shows_its_fields_range_and_default(path):
    model = COMMANDS[path]
    shown = helps(*path)
    for name, (field, methods) in guidance.knobs().items():
        flag = "--" + name.replace("_", "-")
        if path == ("video",) and name == "compat":
            assert flag not in shown  # Wan has one stream layout
            continue
        text = shown[flag]
        assert text.startswith(f"{methods[0].upper()} {field.description}."), text
        if choices := getattr(field.annotation, "__args__", None):  # a Literal
            assert f"One of {', '.join(choices)}." in text
        else:
            low, high = re.search(r"Range (>?-?[\d.]+|-inf)(?:-| to )(<?[\d.]+|inf)\.", text).groups()
            limits = bounds(field)
            expect_low = (f"{limits['ge']:g}" if "ge" in limits else f">{limits['gt']:g}" if "gt" in limits
                          else "-inf")
            expect_high = (f"{limits['le']:g}" if "le" in limits else f"<{limits['lt']:g}" if "lt" in limits
                           else "inf")
            assert (low, high) == (expect_low, expect_high), text
        default = re.search(r"\(default: (.+)\)$", text).group(1)
        if name in ("scale", "offset"):  # the registry sets them per model
            assert default == f"the model's; {getattr(MODELS[model], name):g} for {model}"
        else:
            assert default == (f"{field.default:g}" if isinstance(field.default, float) else field.default)


def test_the_help_follows_the_field(monkeypatch):
    field = guidance.knobs()["nag_scale"].field
    assert options.flags("sd35-large-turbo")["nag_scale"][1] == "NAG extrapolation s; 1 = off. Range 1-20. (default: 4)"
    monkeypatch.setattr(field, "metadata", [Ge(1.0), Le(30.0)])
    monkeypatch.setattr(field, "default", 6.0)
    assert options.flags("sd35-large-turbo")["nag_scale"][1] == "NAG extrapolation s; 1 = off. Range 1-30. (default: 6)"
    assert options.flags("wan-1.3b")["scale"][1].endswith("(default: the model's; 1.5 for wan-1.3b)")
    assert options.flags("sd35-large-turbo")["cfg_scale"][1].endswith("Range >1 to 30. (default: 4.5)")
    assert "Range -5 to inf." in options.flags("sd35-large-turbo")["offset"][1]


def test_gen_video_and_batch_share_the_generation_flags():
    shared = set(options.flags("sd35-large-turbo"))
    assert {"neg", "lora", "guidance_scale", "nag_scale", "nasa_scale", "cfg_scale", "compat", "steps"} <= shared
    for path in COMMANDS:
        flags = set(helps(*path))
        assert {"--" + name.replace("_", "-") for name in shared} - flags <= ({"--compat"} if path == ("video",) else set())
    assert "Replaces every job's negative" in helps("batch", "run")["--neg"]
    assert helps("gen")["--steps"] == helps("batch", "run")["--steps"]


def test_a_knob_declared_twice_differently_is_refused():
    class A(Method):
        strength: float = Field(1.0, ge=0.0, le=2.0, description="how hard")

    class Same(Method):
        strength: float = Field(1.0, ge=0.0, le=2.0, description="how hard")

    class Wider(Method):
        strength: float = Field(1.0, ge=0.0, le=5.0, description="how hard")

    class Text(Method):
        strength: Literal["low", "high"] = Field("low", description="how hard")

    assert guidance.collect_knobs({"a": A, "same": Same})["strength"].methods == ("a", "same")
    for other in (Wider, Text):
        with pytest.raises(TypeError, match="'strength' is declared differently by a and b"):
            guidance.collect_knobs({"a": A, "b": other})


# --- batch: the new flags reach every job ----------------------------------------------------------------------


@pytest.fixture
def planned(monkeypatch, tmp_path):
    """Run `vsf batch FILE --dry-run ARGS` and return the jobs it planned."""
    expand, seen = plan.expand, []

    def spy(*args, **kwargs):
        seen[:] = expand(*args, **kwargs)
        return seen

    monkeypatch.setattr(plan, "expand", spy)
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("defaults: {model: toy, neg: from the file}\nvars: {colour: [red, blue]}\n"
                    "jobs:\n  - prompt: a {colour} car\n  - prompt: a bike\n    neg: from the job\n    lora: [a/b]\n")

    def run(*args: str):
        result = runner.invoke(app, ["batch", str(jobs), "-o", str(tmp_path / "out"), "--dry-run", *args])
        assert result.exit_code == 0, result.output
        return [job.settings for job in seen]

    return run


def test_batch_neg_replaces_every_jobs_negative_and_is_filled_in(planned):
    assert [s["negative"] for s in planned()] == ["from the file", "from the file", "from the job"]
    # Flags are the top layer: --neg wins over the file's and the job's own, and its {variables} multiply each job.
    assert [s["negative"] for s in planned("--neg", "{colour} paint on {prompt}")] == [
        "red paint on a red car", "blue paint on a blue car", "red paint on a bike", "blue paint on a bike"]


@pytest.mark.parametrize("args, expected", [
    (["--lora", "org/one:0.5", "--lora", "org/two"], {"lora": ["org/one:0.5", "org/two"]}),
    (["--guidance-scale", "0.5"], {"guidance_scale": 0.5}),
    (["--scale", "2", "--offset", "0.3", "--compat", "reference"], {"scale": 2.0, "offset": 0.3, "compat": "reference"}),
    (["--method", "nag", "--nag-scale", "6", "--nag-tau", "3", "--nag-alpha", "0.25", "--nag-end", "0.5"],
     {"method": "nag", "nag_scale": 6.0, "nag_tau": 3.0, "nag_alpha": 0.25, "nag_end": 0.5}),
    (["--method", "nasa", "--nasa-scale", "0.4"], {"method": "nasa", "nasa_scale": 0.4}),
    (["--method", "cfg", "--cfg-scale", "3"], {"method": "cfg", "cfg_scale": 3.0}),
    (["--steps", "3", "--size", "32x16", "--dtype", "float32", "--offload", "model"],
     {"steps": 3, "width": 32, "height": 16, "dtype": "float32", "offload": "model"}),
])
def test_batch_generation_flags_reach_every_job(planned, args, expected):
    settings = planned(*args)
    assert len(settings) == 3
    for s in settings:
        assert {k: s[k] for k in expected} == expected


def test_batch_knob_out_of_range_is_one_error(tmp_path):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("jobs:\n  - prompt: a car\n    neg: red\n    model: toy\n")
    result = runner.invoke(app, ["batch", str(jobs), "--dry-run", "--method", "nag", "--nag-scale", "50"])
    assert result.exit_code == 2 and "nag_scale: Input should be less than or equal to 20" in result.output


def test_a_knobs_metadata_key_is_its_field_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    row = json.loads(runner.invoke(app, ["gen", "a car", "--neg", "red", "--model", "toy", "--method", "nag",
                                         "--nag-tau", "3", "--dry-run", "--json"]).stdout)
    assert set(METHOD_SETTINGS) <= set(row) and (row["nag_tau"], row["nag_scale"], row["scale"]) == (3.0, 4.0, None)
