"""The README's console transcripts, run as written: each `$ command` must print the lines shown under it."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# What legitimately varies between runs: timings, and the padding around a line.
_VARYING = [(re.compile(r"\b\d+\.\d+s\b"), "<t>s"), (re.compile(r'"seconds": [0-9.]+'), '"seconds": <t>')]


def console_blocks() -> list[list[tuple[str, list[str]]]]:
    """Each ```console block as (command, expected output lines) pairs."""
    blocks, current, inside = [], None, False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```console"):
            inside, current = True, []
        elif inside and line.startswith("```"):
            inside = False
            blocks.append(current)
        elif inside and line.startswith("$ "):
            current.append((line[2:], []))
        elif inside:
            current[-1][1].append(line)
    return blocks


def yaml_files() -> dict[str, str]:
    """The README's ```yaml blocks that start with `# NAME.yaml`: files the transcripts use."""
    files = {}
    for block in re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        first = block.splitlines()[0]
        if re.fullmatch(r"# \S+\.yaml", first):
            files[first[2:]] = block
    return files


def normalise(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, replacement in _VARYING:
            line = pattern.sub(replacement, line)
        out.append(line.strip())  # alignment (rich centres a table's title to the terminal) is not content
    return out


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line; a line `...` stands for any number of lines."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


def run(command: str, cwd: Path, env: dict, interrupt_after: str | None) -> list[str]:
    """Run one transcript command; stdout and stderr merged in the order they were written, as a terminal shows."""
    command = re.sub(r"^vsf\b", f"{sys.executable} -m vsf_cli", command)
    # As in a terminal, Ctrl-C is not ignored, whatever this test process inherited or an earlier test left set.
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if interrupt_after and line.startswith(interrupt_after):
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground process group
            interrupt_after = None
    proc.wait(timeout=300)
    return lines


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny import build_flux2_klein, build_qwen_image, build_sd3, build_wan, build_wan22, build_zimage

    root = tmp_path_factory.mktemp("readme-models")
    return {"tiny-sd3": build_sd3(root / "tiny-sd3"), "tiny-wan": build_wan(root / "tiny-wan"),
            "tiny-wan22": build_wan22(root / "tiny-wan22"),
            "tiny-wan22-ti2v": build_wan22(root / "tiny-wan22-ti2v", "ti2v"),
            "tiny-zimage": build_zimage(root / "tiny-zimage"),
            "tiny-flux2-klein": build_flux2_klein(root / "tiny-flux2-klein"),
            "tiny-qwen-image": build_qwen_image(root / "tiny-qwen-image")}


@pytest.mark.parametrize("index", range(len(console_blocks())))
def test_readme_transcript(index, models, tmp_path):
    block = console_blocks()[index]
    for name, folder in models.items():
        (tmp_path / name).symlink_to(folder)
    for name, text in yaml_files().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HOME": str(tmp_path / "hf-home"), "COLUMNS": "120"}
    env.pop("FORCE_COLOR", None)
    for command, expected in block:
        # "# Ctrl-C after ..." in a transcript: interrupt once the line shown before "interrupted" is printed.
        interrupt_after = None
        if "# Ctrl-C" in command:
            before = expected[[i for i, line in enumerate(expected) if line.startswith("interrupted")][0] - 1]
            interrupt_after = before.split(" ", 2)[0] + " wrote"
        actual = normalise(run(command, tmp_path, env, interrupt_after))
        assert matches(normalise(expected), actual), (
            f"README transcript drifted at `$ {command}`\n--- README:\n" + "\n".join(expected)
            + "\n--- actual:\n" + "\n".join(actual))


def test_the_harness_can_fail():
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"]) and matches(["..."], [])
    assert not matches(["a", "d"], ["a", "b", "d"]) and not matches(["a"], ["a", "b"])
    assert normalise(['wrote x (seed 1, 12.5s)', '{"seconds": 0.069}']) == ["wrote x (seed 1, <t>s)", '{"seconds": <t>}']
