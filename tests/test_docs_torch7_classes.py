"""docs/torch7_classes.md stays true: every tapernn name it gives exists, and every public
tapernn.nn module class is listed (or is tapernn's own, without a Torch7 counterpart)."""

import re
from pathlib import Path

import tapernn as tn
from tapernn import nn

DOC = Path(__file__).resolve().parents[1] / "docs" / "torch7_classes.md"
ROW = re.compile(r"^\| `(\w+)` \| (.*) \|$")
TAPERNN_ONLY = {"RNN", "Cell"}  # no Torch7 class of that name


def rows():
    return [m.groups() for line in DOC.read_text().splitlines() if (m := ROW.match(line))]


def named(cell):
    """The tapernn names a row gives: backticked identifiers leading the cell or a list."""
    if not cell.startswith("`"):
        return []
    head = cell.split(" — ")[0]
    return [
        re.match(r"[\w.]+", item.strip("` ")).group(0)
        for item in head.split(", ")
        if item.startswith("`")
    ]


def test_every_named_class_exists():
    found = 0
    for torch_name, cell in rows():
        for name in named(cell):
            obj = tn
            for part in name.split(".")[1:] if name.startswith("tn.") else ["nn", name]:
                assert hasattr(obj, part), f"{torch_name}: {name} does not exist"
                obj = getattr(obj, part)
            found += 1
    assert found > 60


def test_every_module_class_is_listed():
    listed = {name for _, cell in rows() for name in named(cell)}
    classes = {k for k, v in vars(nn).items() if isinstance(v, type) and issubclass(v, nn.Module)}
    missing = classes - listed - TAPERNN_ONLY
    assert not missing, f"give {sorted(missing)} their rows in docs/torch7_classes.md"


def test_rows_cover_the_torch7_libraries():
    torch_names = {name for name, _ in rows()}
    for name in (
        "SeqLSTM",
        "Recurrence",
        "TrimZero",
        "SpatialConvolution",
        "Euclidean",
        "NCEModule",
        "RecurrentAttention",
    ):
        assert name in torch_names
