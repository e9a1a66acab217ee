"""Shared fixtures: tiny random-weight pipelines saved to disk once per session and loaded like user models."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

from tiny import build_sd3, build_sd3_lora  # noqa: E402


@pytest.fixture(scope="session")
def sd3_dir(tmp_path_factory):
    return build_sd3(tmp_path_factory.mktemp("models") / "tiny-sd3")


@pytest.fixture(scope="session")
def sd3_dual_dir(tmp_path_factory):
    return build_sd3(tmp_path_factory.mktemp("models") / "tiny-sd35-medium", dual_attention=True, seed=7)


@pytest.fixture(scope="session")
def tiny_lora(sd3_dir, tmp_path_factory):
    return build_sd3_lora(sd3_dir, tmp_path_factory.mktemp("lora"))


def load(path):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def sd3(sd3_dir):
    return load(sd3_dir)


@pytest.fixture
def sd3_dual(sd3_dual_dir):
    return load(sd3_dual_dir)
