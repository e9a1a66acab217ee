"""`vsf ui` on the toy model: the request -> images path, its saves and command lines, and the page in Chromium."""

import itertools
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import typing
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vsf_cli.cli import app
from vsf_cli.errors import UsageError
from vsf_cli.guidance import knobs
from vsf_cli.render.metadata import read_metadata
from vsf_cli.ui.session import Request, Session, command_line, plan, save

runner = CliRunner()
CAR = {"prompt": "a big car on the left", "negative": "wheels", "model": "toy"}


@pytest.fixture(scope="module")
def session():
    return Session("toy")


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def grid(comparison) -> list[np.ndarray]:
    return [pixels(path) for row in comparison.rows for path in row.paths]


def test_the_columns_are_what_vsf_gen_makes_for_the_same_seed(session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    comparison = session.render(plan(Request(**CAR, knobs={"scale": 2.0}, seeds="7", steps=3)))
    assert [row.label for row in comparison.rows] == ["none", "vsf scale 2"]
    flags = {"none": ["--method", "none"], "vsf scale 2": ["--scale", "2"]}
    for index, row in enumerate(comparison.rows):
        result = runner.invoke(app, ["gen", CAR["prompt"], "--neg", "wheels", "--model", "toy", "--steps", "3",
                                     "--seed", "7", "-o", f"{index}.png", *flags[row.label]])
        assert result.exit_code == 0, result.output
        assert np.array_equal(pixels(f"{index}.png"), pixels(row.paths[0]))
        made, shown = read_metadata(f"{index}.png"), read_metadata(row.paths[0])
        assert {**made, "seconds": 0} == {**shown, "seconds": 0}
    assert not np.array_equal(*grid(comparison))  # the negative changed the picture


class Boom(Exception):
    pass


def test_guidance_is_removed_after_a_request_and_after_one_that_fails(session, tmp_path):
    from vsf_cli.generate import Renderer

    request = Request(**CAR, seeds="5", steps=2)
    unguided = plan(request).rows[0].settings[0]
    Renderer(unguided).render(unguided, tmp_path / "fresh.png")  # a fresh load, never guided
    session.render(plan(request))
    session.renderer.render(unguided, tmp_path / "after.png")
    assert np.array_equal(pixels(tmp_path / "after.png"), pixels(tmp_path / "fresh.png"))

    steps = itertools.count(1)

    def fail_in_the_vsf_row():  # the none row takes steps 1 and 2; step 3 runs with VSF installed
        if next(steps) == 3:
            raise Boom

    with pytest.raises(Boom):
        session.render(plan(request), on_step=fail_in_the_vsf_row)
    session.renderer.render(unguided, tmp_path / "after-failure.png")
    assert np.array_equal(pixels(tmp_path / "after-failure.png"), pixels(tmp_path / "fresh.png"))


def test_two_requests_at_once_give_what_they_give_one_after_the_other(session):
    requests = [Request(**CAR, seeds="1", steps=2),
                Request("a house on the right", "a red roof", "toy", method="nag", seeds="2", steps=2)]
    one_after_the_other = [grid(session.render(plan(r))) for r in requests]
    with ThreadPoolExecutor(2) as pool:
        at_once = list(pool.map(lambda r: grid(session.render(plan(r))), requests))
    for alone, together in zip(one_after_the_other, at_once):
        assert all(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))


def test_saved_files_carry_their_settings_and_the_shown_command_remakes_them(session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    comparison = session.render(plan(Request(**CAR, knobs={"scale": 2.5, "offset": 0.3}, seeds="3 4", steps=2)))
    written, commands = save(comparison, [0, 1], Path("saved"))
    assert [p.name for p in written] == [f"a-big-car-on-the-left_{seed}_{label}.png" for label in
                                         ("none", "vsf-scale-2-5") for seed in (3, 4)]
    for path, (row, settings) in zip(written, [(r, s) for r in comparison.rows for s in r.settings]):
        assert np.array_equal(pixels(path), pixels(row.paths[settings["seed"] - 3]))
        info = runner.invoke(app, ["info", "--json", str(path)])
        assert info.exit_code == 0
        assert {k: json.loads(info.stdout)[k] for k in settings} == settings
    for command, files in zip(commands, (written[:2], written[2:])):
        args = shlex.split(command)
        assert args[:2] == ["vsf", "gen"]
        result = runner.invoke(app, args[1:])
        assert result.exit_code == 0, result.output
        remade = [line for line in result.stdout.splitlines() if line.endswith(".png")]
        assert [np.array_equal(pixels(a), pixels(b)) for a, b in zip(remade, files, strict=True)] == [True, True]

    again, _ = save(comparison, [1], Path("saved"))  # a second save never replaces the first
    assert [p.name for p in again] == ["a-big-car-on-the-left_3_vsf-scale-2-5-2.png",
                                       "a-big-car-on-the-left_4_vsf-scale-2-5-2.png"]
    assert sorted(p.name for p in Path("saved").iterdir()) == sorted(p.name for p in written + again)


def test_lines_of_the_negative_box_are_several_negatives_as_repeated_negs(session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    comparison = session.render(plan(Request(**{**CAR, "negative": "wheels\n\n sun \n"}, seeds="5", steps=2)))
    assert comparison.rows[1].settings[0]["negative"] == ["wheels", "sun"]
    written, commands = save(comparison, [1], Path("saved"))
    args = shlex.split(commands[0])
    assert args[args.index("--neg"):args.index("--neg") + 4] == ["--neg", "wheels", "--neg", "sun"]
    result = runner.invoke(app, args[1:])
    assert result.exit_code == 0, result.output
    remade = [line for line in result.stdout.splitlines() if line.endswith(".png")]
    assert np.array_equal(pixels(remade[0]), pixels(written[0]))


def test_a_wan_folder_renders_clips_that_save_with_sidecars_and_remake_with_vsf_video(tmp_path, monkeypatch):
    import imageio_ffmpeg
    from tiny import build_wan

    monkeypatch.chdir(tmp_path)
    build_wan(tmp_path / "tiny-wan")
    request = Request("a corgi", "waves", "./tiny-wan", seeds="7", steps=2, size="64x32", frames=5)
    wan = Session("./tiny-wan")  # kept: its temp folder holds the clips until it goes
    comparison = wan.render(plan(request))
    written, commands = save(comparison, [0, 1], Path("saved"))
    assert [p.name for p in sorted(Path("saved").iterdir())] == [
        "a-corgi_7_none.json", "a-corgi_7_none.mp4", "a-corgi_7_vsf-scale-1-5.json", "a-corgi_7_vsf-scale-1-5.mp4"]

    def frames(path) -> list[bytes]:
        return list(itertools.islice(imageio_ffmpeg.read_frames(str(path)), 1, None))  # after the header

    for path, command, row in zip(written, commands, comparison.rows):
        assert read_metadata(path) == read_metadata(row.paths[0])
        args = shlex.split(command)
        assert args[:2] == ["vsf", "video"] and "--compat" not in args and args[args.index("--frames") + 1] == "5"
        result = runner.invoke(app, args[1:])
        assert result.exit_code == 0, result.output
        assert frames(result.stdout.split()[-1]) == frames(path)


@pytest.mark.parametrize("page, flags", [
    ({"size": "1000"}, ["--size", "1000"]),
    ({"knobs": {"scale": 25.0}}, ["--scale", "25"]),
    ({"method": "nag", "knobs": {"nag_tau": 0.5}}, ["--method", "nag", "--nag-tau", "0.5"]),
    ({"method": "cfg", "knobs": {"cfg_scale": 1.0}}, ["--method", "cfg", "--cfg-scale", "1"]),
    ({"seeds": "-1"}, ["--seed", "-1"]),
    ({"negative": "  "}, ["--neg", "  "]),
])
def test_the_page_refuses_what_vsf_gen_refuses_in_the_same_words(page, flags):
    with pytest.raises(UsageError) as refused:
        plan(Request(**{**CAR, **page}))
    result = runner.invoke(app, ["gen", CAR["prompt"], "--neg", "wheels", "--model", "toy", "--dry-run", *flags])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {refused.value}"


def test_the_page_refuses_a_sweep_or_seeds_that_are_not_numbers():
    with pytest.raises(UsageError, match="sweep: 'big' is not a number"):
        plan(Request(**CAR, sweep="2 big"))
    with pytest.raises(UsageError, match="seeds: '1.5' is not an integer"):
        plan(Request(**CAR, seeds="1.5"))


def test_a_sweep_is_one_row_per_value_of_the_methods_first_knob():
    comparison = plan(Request(**CAR, knobs={"offset": 0.4}, seeds="0 1", sweep="1 2, 3.5 5"))
    assert [row.label for row in comparison.rows] == ["none", "vsf scale 1", "vsf scale 2", "vsf scale 3.5",
                                                      "vsf scale 5"]
    assert [[s["seed"] for s in row.settings] for row in comparison.rows] == [[0, 1]] * 5
    assert {s["offset"] for row in comparison.rows[1:] for s in row.settings} == {0.4}
    nag = plan(Request(**CAR, method="nag", sweep="2 8"))
    assert [row.settings[0]["nag_scale"] for row in nag.rows[1:]] == [2.0, 8.0]


def test_the_load_flags_of_vsf_ui_go_into_the_settings_and_the_shown_command():
    comparison = plan(Request(**CAR, seeds="1"), load={"device": "cpu", "dtype": "float32"})
    settings = comparison.rows[1].settings[0]
    assert (settings["device"], settings["dtype"], settings["offload"]) == ("cpu", "float32", "none")
    args = shlex.split(command_line(settings, [1], "vsf.png"))
    assert args[args.index("--device"):args.index("--device") + 4] == ["--device", "cpu", "--dtype", "float32"]
    assert "--offload" not in args


def test_the_page_shows_errors_in_one_line_and_renders_after_them(session):
    from vsf_cli.errors import GatedModelError
    from vsf_cli.ui.page import build

    handlers = {f.name: f.fn for f in build(session, "toy").fns.values()}
    defaults = [knob.field.default for knob in knobs().values()]

    def generate(size="32x32"):  # what the Generate button sends: the inputs in the page's order
        return handlers["run"](CAR["prompt"], "wheels", "toy", "vsf", "", "0", 2, size, None, *defaults)[0]

    assert generate("1000") == "**error:** size: width 1000 is not a multiple of 16"
    for error, words in ((RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory on the"),
                         (GatedModelError("org/model is gated: accept its license"), "org/model is gated")):
        def fail(*args, error=error, **kwargs):
            raise error

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(session, "render", fail)
            status = generate()
        assert status.startswith("**error:** ") and words in status and "\n" not in status
    assert generate().startswith("rendered 2 rows × 1 seed in")


def test_the_knob_inputs_are_built_from_the_methods_own_fields(session):
    from vsf_cli.ui.page import build

    blocks = {block.elem_id: block for block in build(session, "toy").blocks.values()}
    for name, knob in knobs().items():
        field, box = knob.field, blocks[f"knob-{name}"]
        if typing.get_origin(field.annotation) is typing.Literal:
            assert [value for _, value in box.choices] == list(typing.get_args(field.annotation))
        else:
            bound = {a: getattr(c, a) for c in field.metadata for a in ("ge", "gt", "le", "lt")
                     if getattr(c, a, None) is not None}
            assert (box.minimum, box.maximum) == (bound.get("ge", bound.get("gt")), bound.get("le", bound.get("lt")))
        assert box.value == field.default  # the toy's scale and offset are the method's defaults too
        assert box.visible == ("vsf" in knob.methods)


def test_without_gradio_vsf_ui_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "vsf_cli.ui.page", raising=False)
    result = runner.invoke(app, ["ui", "--model", "toy"])
    assert result.exit_code == 2
    assert result.output.splitlines() == ['error: vsf ui needs gradio, an optional extra: pip install "vsf-cli[ui]"']


CHROMEDRIVER = "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"vsf ui exited with {server.returncode}:\n{server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"vsf ui did not serve {url} within {seconds}s")


def test_the_page_in_a_real_browser(tmp_path):
    """Type, generate, see 2 x N images, save; an error shows on the page and the server stays up. The screenshot
    goes to $VSF_UI_SCREENSHOT (the README's docs/ui.png) or the test's folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assert Path(CHROMEDRIVER).is_file(), "no chromedriver: apt-get install -y chromium chromium-driver"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "vsf_cli", "ui", "--model", "toy", "--port", str(port)],
                              cwd=tmp_path, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1100"):
        options.add_argument(argument)
    browser = None
    try:
        wait_for_page(f"http://127.0.0.1:{port}/", server)
        browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)

        def box(name: str):
            return wait.until(lambda b: b.find_element(By.CSS_SELECTOR, f"#{name} textarea, #{name} input"))

        def retype(name: str, text: str):
            box(name).clear()
            box(name).send_keys(text)

        def status_after_generate() -> str:
            before = browser.find_element(By.ID, "status").text
            browser.find_element(By.ID, "generate").click()
            return wait.until(lambda b: next((s for s in [b.find_element(By.ID, "status").text]
                                              if s != before and s.startswith(("rendered", "error"))), None))

        box("prompt").send_keys(CAR["prompt"])
        box("negative").send_keys("wheels")
        retype("seeds", "0 1 2 3")
        retype("size", "1000")
        assert status_after_generate() == "error: size: width 1000 is not a multiple of 16"
        retype("size", "32x32")
        assert status_after_generate().startswith("rendered 2 rows × 4 seeds")
        images = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#grid img")[7:] and
                            b.find_elements(By.CSS_SELECTOR, "#grid img"))
        assert [i.get_attribute("alt") for i in images] == [f"{row} · seed {seed}" for row in ("none", "vsf scale 3.5")
                                                            for seed in range(4)]
        loaded = "return [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
        wait.until(lambda b: b.execute_script(loaded))  # the page can fetch every image it shows
        browser.execute_script("window.scrollTo(0, 0)")
        screenshot = Path(os.environ.get("VSF_UI_SCREENSHOT") or tmp_path / "ui.png")
        assert browser.save_screenshot(str(screenshot.resolve()))

        browser.find_element(By.ID, "save").click()
        wait.until(lambda b: b.find_element(By.ID, "saved").text.startswith("saved"))
        saved = sorted((tmp_path / "out" / "ui").iterdir())
        assert [p.name for p in saved] == sorted(f"a-big-car-on-the-left_{seed}_{row}.png" for seed in range(4)
                                                 for row in ("none", "vsf-scale-3-5"))
        assert {(read_metadata(p)["method"], read_metadata(p)["negative"]) for p in saved} == {
            ("none", "wheels"), ("vsf", "wheels")}
        assert "vsf gen 'a big car on the left' --neg wheels --model toy --method vsf --scale 3.5" in \
            browser.find_element(By.ID, "saved").text
    finally:
        if browser:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)
