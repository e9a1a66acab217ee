"""The method write-up is in the repository, and every section cited as `docs/method.md §N` exists in it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
CITATION = re.compile(r"docs/method\.md §(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", re.M)
# Where citations live: the package, the tests, the docs and the top-level Markdown (not the virtual environment).
SOURCES = ["vsf_cli", "tests", "docs", "presets"]


def _files():
    for name in SOURCES:
        for path in sorted((ROOT / name).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".toml", ".txt"}:
                yield path
    yield from sorted(ROOT.glob("*.md"))


def test_method_doc_sections_are_numbered_in_order():
    sections = HEADING.findall(METHOD.read_text(encoding="utf-8"))
    top = [int(s) for s in sections if "." not in s]
    assert top == list(range(1, len(top) + 1)) and len(top) >= 9
    assert len(sections) == len(set(sections))


def test_every_cited_section_exists():
    sections = set(HEADING.findall(METHOD.read_text(encoding="utf-8")))
    cited = {}
    for path in _files():
        for number in CITATION.findall(path.read_text(encoding="utf-8", errors="replace")):
            cited.setdefault(number, []).append(path.relative_to(ROOT).as_posix())
    missing = {n: where for n, where in cited.items() if n not in sections}
    assert not missing, f"cited but not a heading of docs/method.md: {missing}"
    # The README and the guidance code cite it; if this drops, the pattern stopped matching.
    assert len(cited) >= 6 and any("README.md" in files for files in cited.values())


def test_nothing_cites_the_old_out_of_tree_spec():
    # CHANGELOG.md may name the old file in its history; everything else must cite docs/method.md.
    old = "METHOD" + ".md"
    offenders = [p.relative_to(ROOT).as_posix() for p in _files()
                 if p.name != "CHANGELOG.md" and old in p.read_text(encoding="utf-8", errors="replace")]
    assert not offenders, f"{old} is not in the repository; cite docs/method.md §N instead: {offenders}"


def test_cross_references_inside_the_method_doc_exist():
    text = METHOD.read_text(encoding="utf-8")
    sections = set(HEADING.findall(text))
    referenced = set(re.findall(r"§(\d+(?:\.\d+)*)", text))
    assert referenced and referenced <= sections, sorted(referenced - sections)


def test_readme_first_commands_show_the_cpu_route():
    # A CPU-only machine must not be sent to the 6 GB CUDA wheel: the CPU index sits in the README's first block.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in first_block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) == 2
    assert commands[0].startswith("pip install . && vsf gen ") and "--model toy" in commands[0]
    assert commands[1].startswith('pip install -e ".[test]" && python -m pytest')
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in first_block
    assert "459 MB" in readme and "963 MB" in readme
