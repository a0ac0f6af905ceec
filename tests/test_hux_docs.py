"""ARCHITECTURE.md names every module of the package and no file that is gone (hux: the map read
as a new developer would; the README's blocks: tests/test_hunt_hqa14.py)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> list[Path]:
    return sorted(p for p in (ROOT / "tapernn").rglob("*.py") if p.stem != "__init__")


def test_architecture_names_every_module():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    unnamed = [
        str(p.relative_to(ROOT))
        for p in _modules()
        if not re.search(rf"(?<![\w.]){re.escape(p.stem)}(?!\w)", text)
    ]
    assert not unnamed, f"ARCHITECTURE.md does not name {unnamed}"


DOCS = [
    "ARCHITECTURE.md",
    "README.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
]


@pytest.mark.parametrize("doc", DOCS)
def test_no_file_named_is_gone(doc):
    """Every `x.py` / `dir/x*.py` the text names is a file of the package, tests/, tools/ or
    examples/ (at any depth below them, as the text names `scan_run.py` for tapernn/scan_run.py)."""
    text = (ROOT / doc).read_text()
    where = [ROOT / d for d in ("tapernn", "tests", "tools", "examples")]
    gone = []
    for name in sorted(set(re.findall(r"[\w/*]+\.py\b", text))):
        short = name
        for top in ("tapernn/", "tests/", "tools/", "examples/"):
            short = short.removeprefix(top)
        if not any(list(base.glob(short)) or list(base.glob(f"**/{short}")) for base in where):
            gone.append(name)
    assert not gone, f"{doc} names files that do not exist: {gone}"


@pytest.mark.parametrize("doc", ["ARCHITECTURE.md", "README.md"])
def test_every_module_attribute_named_is_in_that_module(doc):
    """`module.name` in the text (own_threads.JOIN_SPIN_S, donate.tail_gemms, ...) names something
    that module's source has: ARCHITECTURE.md said fused_lowering.SIZE_ROWS, which lives in
    plan_options.py."""
    sources: dict[str, str] = {}
    for p in _modules():
        sources[p.stem] = sources.get(p.stem, "") + p.read_text()
    del sources["nn"], sources["compiled"]  # (the text's `nn.LSTM` and `compiled.report`: the
    # package and a Compiled object, not ops/nn.py and export/compiled.py)
    text = (ROOT / doc).read_text()
    missing = sorted(
        f"{module}.{name}"
        for module, name in set(re.findall(r"\b([a-z_]\w*)\.([A-Za-z_]\w*)\b", text))
        if module in sources and name != "py" and not re.search(rf"\b{name}\b", sources[module])
    )
    assert not missing, f"{doc} names {missing}"
