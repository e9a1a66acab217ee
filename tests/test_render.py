"""Tests for output naming, atomic writes, PNG metadata and `vsf info` (CPU only, no network)."""

import json
import os

import pytest
from PIL import Image
from typer.testing import CliRunner

from vsf_cli.errors import UsageError, VsfError
from vsf_cli.render.metadata import a1111_parameters, parse_a1111, read_metadata, save_png
from vsf_cli.render.naming import atomic_write, check_free, expand, slugify

FIELDS = {"index": 7, "seed": 123, "slug": "a-red-bike", "model": "stabilityai/stable-diffusion-3.5-large-turbo",
          "method": "vsf"}


def settings(**over) -> dict:
    s = {
        "prompt": "a cat on a red bike", "negative": "wheels", "model": "sd35-large-turbo", "method": "vsf",
        "scale": 3.5, "offset": 0.1, "compat": "paper", "steps": 8, "width": 1024, "height": 768, "seed": 123,
        "guidance_scale": 0.0, "max_sequence_length": 256, "lora": [], "dtype": "auto", "device": "auto",
        "offload": "none", "version": "0.1.0", "seconds": 2.5,
    }
    return {**s, **over}


# --- naming -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, slug", [
    ("A Cat on a Red Bike!", "a-cat-on-a-red-bike"),
    ("  café -- crème  ", "cafe-creme"),
    ("猫", "image"),
    ("", "image"),
    ("../../etc/passwd", "etc-passwd"),
])
def test_slugify(text, slug):
    assert slugify(text) == slug


def test_slugify_cuts_at_word_boundary():
    slug = slugify("word " * 40, max_len=20)
    assert slug == "word-word-word-word"
    assert len(slugify("x" * 100, max_len=10)) == 10


def test_expand_all_fields():
    path = expand("out/{index:05d}_{seed}_{slug}_{model}_{method}.png", FIELDS)
    assert str(path) == os.path.join("out", "00007_123_a-red-bike_stabilityai--stable-diffusion-3.5-large-turbo_vsf.png")


def test_expand_model_folder_is_one_component():
    assert expand("{model}/{seed}.png", FIELDS).parts == ("stabilityai--stable-diffusion-3.5-large-turbo", "123.png")


def test_expand_sanitises_string_fields():
    path = expand("out/{slug}.png", {**FIELDS, "slug": "../../etc"})
    assert path.parent.name == "out" and ".." not in path.parts and not path.name.startswith(".")


def test_expand_refuses_parent_unless_allowed():
    with pytest.raises(UsageError, match=r"\.\."):
        expand("../x.png", FIELDS)
    with pytest.raises(UsageError, match=r"\.\."):
        expand("out/../../{seed}.png", FIELDS)
    assert str(expand("../x/{seed}.png", FIELDS, allow_parent=True)) == os.path.join("..", "x", "123.png")


def test_expand_must_stay_in_template_folder():
    # A padded empty value would become ".." or "/" without the folder check.
    with pytest.raises(UsageError, match="outside 'out'"):
        expand("out/{model:.<2}/x.png", {**FIELDS, "model": ""})
    with pytest.raises(UsageError, match="outside '.'"):
        expand("{model:/<1}x.png", {**FIELDS, "model": ""})
    with pytest.raises(UsageError, match="outside"):
        expand("out/{seed}/../../x.png", FIELDS, allow_parent=True)


def test_expand_absolute_and_relative_folders(tmp_path):
    assert expand(str(tmp_path / "{seed}.png"), FIELDS) == tmp_path / "123.png"
    assert expand("{seed}.png", FIELDS).parts == ("123.png",)


@pytest.mark.parametrize("template, message", [
    ("out/{prompt}.png", "unknown field {prompt}.*allowed fields"),
    ("{0}.png", "unknown field"),
    ("{model.__class__}.png", "unknown field"),
    ("out/{seed.png", "malformed.*allowed fields"),
    ("{slug:05d}.png", "cannot fill.*allowed fields"),
    ("out/{seed}", "file extension"),
    ("out/{seed}.{method}", "file extension"),
])
def test_expand_bad_templates(template, message):
    with pytest.raises(UsageError, match=message):
        expand(template, FIELDS)


def test_check_free_collision(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "." / "a.png"]
    with pytest.raises(UsageError, match=r"same path for images 1 and 3.*\{index\} or \{seed\}"):
        check_free(paths, overwrite=True)


def test_check_free_existing_file(tmp_path):
    (tmp_path / "b.png").write_bytes(b"x")
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    with pytest.raises(VsfError, match=r"b\.png already exists \(pass --overwrite to replace it\)") as e:
        check_free(paths, overwrite=False)
    assert not isinstance(e.value, UsageError)
    check_free(paths, overwrite=True)
    check_free([tmp_path / "new" / "c.png"], overwrite=False)


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "deep" / "x.png"
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text("new")

    atomic_write(target, write)
    assert target.read_text() == "new"
    assert seen[0].name.startswith(".x.png.") and seen[0].name.endswith(".partial.png")
    atomic_write(target, lambda tmp: tmp.write_text("newer"))
    assert target.read_text() == "newer"
    assert os.listdir(target.parent) == ["x.png"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_write_leaves_nothing(tmp_path, error):
    target = tmp_path / "x.png"
    target.write_text("old")

    def write(tmp):
        tmp.write_text("half")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, write)
    assert os.listdir(tmp_path) == ["x.png"] and target.read_text() == "old"


# --- metadata ---------------------------------------------------------------------------------------------------

def test_a1111_parameters_text():
    text = a1111_parameters(settings())
    assert text == (
        "a cat on a red bike\nNegative prompt: wheels\n"
        "Steps: 8, Seed: 123, Size: 1024x768, Model: sd35-large-turbo, CFG scale: 0.0, Guidance method: vsf, "
        "VSF scale: 3.5, VSF offset: 0.1, Version: vsf 0.1.0"
    )
    text = a1111_parameters(settings(negative=None, compat="reference", lora=["a.safetensors:0.8"]))
    assert "Negative prompt" not in text
    assert "VSF compat: reference, Lora: a.safetensors:0.8, Version" in text


def test_a1111_quotes_values_with_commas():
    text = a1111_parameters(settings(model='my, "odd" model'))
    assert 'Model: "my, \\"odd\\" model",' in text
    assert parse_a1111(text)["model"] == 'my, "odd" model'


TRICKY = 'a "red" bike, with wheels\nsecond line: 猫 ü'


@pytest.mark.parametrize("prompt, negative", [
    ("a cat", None),
    (TRICKY, "blurry, \"bad\"\nugly 猫"),
    ("", "only negative"),
])
def test_parse_a1111_round_trip(prompt, negative):
    s = settings(prompt=prompt, negative=negative, compat="reference", lora=["a.safetensors:0.8", "b, c.safetensors"],
                 sampler="Euler", scheduler="simple", seed=2**62, offset=0.25)
    parsed = parse_a1111(a1111_parameters(s))
    keys = ["prompt", "steps", "seed", "width", "height", "model", "guidance_scale", "method", "scale", "offset",
            "compat", "lora", "sampler", "scheduler", "version"]
    assert {k: parsed[k] for k in keys} == {k: s[k] for k in keys}
    assert parsed.get("negative") == negative
    assert type(parsed["steps"]) is int and type(parsed["scale"]) is float and type(parsed["guidance_scale"]) is float
    assert parse_a1111(a1111_parameters(settings()))["compat"] == "paper"


def test_parse_a1111_foreign_text():
    text = ("masterpiece, 1girl\nNegative prompt: lowres, bad hands\n"
            'Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, '
            'Model hash: abc123, Model: sdxl, Lora hashes: "x: 1, y: 2", Version: v1.10.1')
    parsed = parse_a1111(text)
    assert parsed["prompt"] == "masterpiece, 1girl" and parsed["negative"] == "lowres, bad hands"
    assert (parsed["steps"], parsed["seed"], parsed["width"], parsed["height"]) == (20, 42, 512, 768)
    assert parsed["guidance_scale"] == 7.0 and parsed["model"] == "sdxl" and parsed["scheduler"] == "Karras"
    assert parsed["Model hash"] == "abc123" and parsed["Lora hashes"] == "x: 1, y: 2"
    assert parse_a1111("just a prompt") == {"prompt": "just a prompt"}


def test_png_round_trip(tmp_path):
    s = settings(prompt=TRICKY, negative="猫, \"no\"", lora=["a.safetensors:0.8"])
    path = tmp_path / "out" / "x.png"
    save_png(Image.new("RGB", (16, 8), "red"), path, s)
    assert read_metadata(path) == s
    assert os.listdir(path.parent) == ["x.png"]
    with Image.open(path) as im:
        assert im.size == (16, 8)
        parsed = parse_a1111(im.text["parameters"])
        assert json.loads(im.text["vsf"]) == s
    assert parsed["prompt"] == TRICKY and parsed["negative"] == s["negative"]
    assert (parsed["steps"], parsed["seed"], parsed["width"], parsed["height"]) == (8, 123, 1024, 768)
    assert (parsed["scale"], parsed["offset"]) == (3.5, 0.1)


def test_read_metadata_falls_back_to_parameters(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 4, Seed: 9, Size: 64x32, VSF scale: 2.0")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    assert read_metadata(path) == {"prompt": "a cat", "steps": 4, "seed": 9, "width": 64, "height": 32, "scale": 2.0}


def test_read_metadata_json_sidecar(tmp_path):
    path = tmp_path / "clip.json"
    path.write_text(json.dumps(settings()))
    assert read_metadata(path) == settings()
    path.write_text("[1, 2]")
    with pytest.raises(UsageError, match="not an object"):
        read_metadata(path)
    path.write_text("{oops")
    with pytest.raises(UsageError, match="not valid JSON"):
        read_metadata(path)


def test_read_metadata_errors(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(UsageError, match=r"cannot read .*notes\.png: not an image"):
        read_metadata(text)
    bare = tmp_path / "bare.png"
    Image.new("RGB", (4, 4)).save(bare)
    with pytest.raises(UsageError, match=r"no vsf or A1111 metadata in .*bare\.png"):
        read_metadata(bare)
    with pytest.raises(UsageError, match="no such file"):
        read_metadata(tmp_path / "missing.png")


# --- vsf info ---------------------------------------------------------------------------------------------------

@pytest.fixture
def runner():
    return CliRunner()


def test_info_table_and_json(tmp_path, runner):
    from vsf_cli.cli import app

    path = tmp_path / "x.png"
    s = settings(prompt="a [bold]cat[/bold]")
    save_png(Image.new("RGB", (4, 4)), path, s)
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "a [bold]cat[/bold]" in result.stdout and "sd35-large-turbo" in result.stdout
    assert "max_sequence_length" in result.stdout
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == s


def test_info_bad_file(tmp_path, runner):
    from vsf_cli.cli import app

    path = tmp_path / "notes.txt"
    path.write_text("hello")
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an image" in lines[0]


# --- metadata without decoding --------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_png(path, side: int, text_chunks: list[bytes], after_idat: list[bytes] = ()) -> None:
    """A valid, decodable side x side 1-bit grayscale PNG, a few kB on disk: decoding it would take side² bytes."""
    import struct
    import zlib

    squeeze = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte, then the packed bits of one row
    idat = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)))
        for c in text_chunks:
            f.write(c)
        f.write(_chunk(b"IDAT", idat))
        for c in after_idat:
            f.write(c)
        f.write(_chunk(b"IEND", b""))


def test_text_chunks_of_every_kind_and_place(tmp_path):
    import zlib

    s = settings(prompt="猫 on a bike")
    path = tmp_path / "kinds.png"
    vsf = json.dumps(s).encode()
    itxt = b"vsf\0\1\0\0\0" + zlib.compress(vsf)  # compressed iTXt, no language
    ztxt = b"parameters\0\0" + zlib.compress(b"a cat\nSteps: 4, Seed: 9, Size: 64x32")
    _huge_png(path, 64, [_chunk(b"tEXt", b"Software\0x")], after_idat=[_chunk(b"iTXt", itxt), _chunk(b"zTXt", ztxt)])
    from vsf_cli.render.metadata import png_text_chunks

    assert png_text_chunks(path) == {"Software": "x", "vsf": json.dumps(s), "parameters": "a cat\nSteps: 4, Seed: 9, Size: 64x32"}
    assert read_metadata(path) == s
    with Image.open(path) as im:  # PIL agrees, once it has read past the pixels
        im.load()
        assert im.text["vsf"] == json.dumps(s)


def test_info_on_a_20000_pixel_square_reads_no_pixels(tmp_path):
    """A 20000x20000 PNG (400 Mpx; PIL refuses it as a decompression bomb) is read in bounded memory, also by --from."""
    import subprocess
    import sys

    s = settings(model="toy", width=32, height=32)
    path = tmp_path / "huge.png"
    _huge_png(path, 20000, [_chunk(b"tEXt", b"vsf\0" + json.dumps(s).encode())])
    assert path.stat().st_size < 200_000
    probe = (
        "import json, resource, sys\n"
        "def peak_kb():\n"
        "    # VmHWM is this program's own peak; ru_maxrss also counts the forking pytest process's (torch-sized)\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1])\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "from typer.testing import CliRunner\n"
        "from vsf_cli.cli import app\n"
        "info = CliRunner().invoke(app, ['info', sys.argv[1], '--json'])\n"
        "replay = CliRunner().invoke(app, ['gen', '--from', sys.argv[1], '--dry-run'])\n"
        "print(json.dumps({'info': [info.exit_code, info.stdout], 'replay': [replay.exit_code, replay.stdout],\n"
        "                  'maxrss_kb': peak_kb()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["info"][0] == 0 and json.loads(result["info"][1]) == s
    assert result["replay"][0] == 0 and '"model": "toy"' in result["replay"][1]
    # Decoding would take 400 MB (PIL keeps 1-bit images at a byte per pixel); both peaks are in kB.
    assert result["maxrss_kb"] < 300 * 1024, result["maxrss_kb"]


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n" + b"\0\0\0\x0dIHDR\0\0", "damaged PNG"),  # cut inside the header chunk
    (b"\x89PNG\r\n\x1a\n" + b"\xff\xff\xff\xff????", "damaged PNG"),  # garbage where a chunk should start
    (b"\x89PNG\r\n", "not an image"),  # cut inside the signature
    (os.urandom(64).replace(b"\x89", b"\0"), "not an image"),
])
def test_info_on_truncated_or_garbage_png_is_one_line(tmp_path, runner, content, message):
    from vsf_cli.cli import app

    path = tmp_path / "bad.png"
    path.write_bytes(content)
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Error" not in lines[0], lines


def test_truncated_png_keeps_text_read_before_the_cut(tmp_path):
    path = tmp_path / "cut.png"
    save_png(Image.new("RGB", (64, 64), "red"), path, settings())
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"IDAT") + 20])  # cut inside the pixel data, after the text chunks
    assert read_metadata(path) == settings()


# --- video outputs: frames folders and their sidecars ---------------------------------------------------------------

def test_check_free_frames_folder_and_its_sidecar(tmp_path):
    folder, side = tmp_path / "clip_7", tmp_path / "clip_7.json"
    side.write_text("{}")
    with pytest.raises(VsfError, match=r"clip_7\.json already exists \(pass --overwrite") as e:
        check_free([folder, side], overwrite=False, folders=True)
    assert not isinstance(e.value, UsageError)
    check_free([folder, side], overwrite=True, folders=True)  # a sidecar is a file, and --overwrite replaces it
    folder.mkdir()
    check_free([folder, side], overwrite=True, folders=True)
    blocker = tmp_path / "clip_8"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match=r"clip_8 is not a folder"):
        check_free([blocker, tmp_path / "clip_8.json"], overwrite=True, folders=True)


@pytest.mark.parametrize("name, expected", [
    ("clip.mp4", "clip.json"), ("clip.GIF", "clip.json"), ("clip.webp", "clip.json"), ("clip", "clip.json"),
    ("wan-1.3b_7", "wan-1.3b_7.json"), ("wan-1.3b_7.mp4", "wan-1.3b_7.json"),
])
def test_sidecar_names(tmp_path, name, expected):
    from vsf_cli.render.video import sidecar

    assert sidecar(tmp_path / name) == tmp_path / expected


def test_video_frames_with_an_existing_sidecar_says_already_exists(tmp_path, runner, monkeypatch):
    from vsf_cli.cli import app

    model = tmp_path / "wan"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "WanPipeline"}')  # enough to plan; --dry-run loads nothing
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "clip_7.json").write_text("{}")
    args = ["video", "a corgi", "--neg", "waves", "--model", str(model), "--format", "frames", "-o", "out/clip_{seed}.png",
            "--seed", "7", "--dry-run"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == "error: out/clip_7.json already exists (pass --overwrite to replace it)"
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("out/clip_7\t")


# --- render.metadata and render.video are separate modules --------------------------------------------------------

@pytest.mark.parametrize("module, other", [("vsf_cli.render.metadata", "vsf_cli.render.video"),
                                           ("vsf_cli.render.video", "vsf_cli.render.metadata")])
def test_render_modules_import_alone(module, other):
    """Each imports in a fresh interpreter without loading the other (metadata -> video only inside a function)."""
    import subprocess
    import sys

    code = f"import sys, {module}; print({other!r} in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_video_code_never_imports_metadata():
    """The dependency goes one way: video.py names no render.metadata, even inside a function."""
    import ast

    import vsf_cli.render.video as video

    tree = ast.parse(open(video.__file__, encoding="utf-8").read())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any("metadata" in m for m in modules), modules


def test_video_suffixes_are_the_video_formats():
    from vsf_cli.render.metadata import VIDEO_SUFFIXES
    from vsf_cli.render.video import FORMATS

    assert set(VIDEO_SUFFIXES) == {ext for ext in FORMATS.values() if ext}


def test_video_settings_from_sidecar_then_comment_tag(tmp_path, monkeypatch):
    import vsf_cli.render.video as video

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    tags: list[str] = []
    monkeypatch.setattr(video, "mp4_comments", lambda path: tags)
    with pytest.raises(UsageError, match=r"no vsf settings in .*clip\.mp4 \(no sidecar, no comment tag\)"):
        read_metadata(clip)
    tags[:] = ["[1]", json.dumps(settings())]  # a comment that is JSON but not settings: the next one is read
    assert read_metadata(clip) == settings()
    tags[:] = ["{oops", json.dumps(settings())]  # a damaged one stops the search, as before
    with pytest.raises(UsageError, match="no vsf settings"):
        read_metadata(clip)
    (tmp_path / "clip.json").write_text(json.dumps(settings(seed=5)))
    assert read_metadata(clip)["seed"] == 5  # the sidecar wins over the tag
    gif = tmp_path / "loop.gif"
    gif.write_bytes(b"")
    with pytest.raises(UsageError, match=r"no settings for .*loop\.gif: its sidecar .*loop\.json is missing"):
        read_metadata(gif)
