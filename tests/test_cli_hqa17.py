"""hqa17's QA round of the command line: a `--cell` class that cannot be a layer of the language
model (no `step`, the abstract base, a constructor that does not take (input_size,
hidden_size)) is refused with the options, before the corpus is read or a model is built."""

import pytest

from tapernn.apps.charlm import CellSpecError, resolve_cell
from tapernn.apps.cli import main


@pytest.fixture
def user_cells(tmp_path, monkeypatch):
    (tmp_path / "hqa17_cells.py").write_text(
        "from tapernn import nn\n"
        "class NoStep(nn.Cell):\n"
        "    state_names = ('h',)\n"
        "class Inherits(NoStep):\n"
        "    pass\n"
        "class ThreeArgs(nn.Cell):\n"
        "    state_names = ('h',)\n"
        "    def __init__(self, input_size, hidden_size, gain):\n"
        "        super().__init__(input_size, hidden_size)\n"
        "    def step(self, x, h):\n"
        "        return h\n"
        "class Good(nn.Cell):\n"
        "    state_names = ('h',)\n"
        "    def __init__(self, input_size, hidden_size):\n"
        "        super().__init__(input_size, hidden_size)\n"
        "        self.w = self.parameter('w', (input_size + hidden_size, hidden_size))\n"
        "    def step(self, x, h):\n"
        "        from tapernn import tanh, concat\n"
        "        return tanh(concat([x, h], axis=-1) @ self.w)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "hqa17_cells"
    import sys

    sys.modules.pop("hqa17_cells", None)


@pytest.mark.parametrize(
    "spec, says",
    [
        ("tapernn.nn:Cell", "nn.Cell does not define step(self, x, *state)"),
        ("hqa17_cells:NoStep", "NoStep does not define step(self, x, *state)"),
        ("hqa17_cells:Inherits", "Inherits does not define step(self, x, *state)"),
        ("tapernn.nn:AbstractRecurrent", "AbstractRecurrent is abstract"),
        ("hqa17_cells:ThreeArgs", "ThreeArgs(input_size, hidden_size) cannot be called"),
        ("tapernn.nn:Recurrent", "Recurrent(input_size, hidden_size) cannot be called"),
        ("tapernn.nn:Recurrence", "Recurrence(input_size, hidden_size) cannot be called"),
        ("tapernn.nn:NormStabilizer", "NormStabilizer(input_size, hidden_size) cannot be called"),
    ],
)
def test_a_cell_that_cannot_be_a_layer_is_refused_with_the_options(
    spec, says, user_cells, tmp_path, capsys
):
    """On main: a Cell without step was refused when training started (exit 1, after the
    baseline line), the others when the model was built (after the corpus was read)."""
    with pytest.raises(CellSpecError, match=f"--cell {spec}: "):
        resolve_cell(spec)
    text = tmp_path / "t.txt"
    text.write_text("abc def ghi " * 200)
    argv = ["train", "--text", str(text), "--cell", spec, "--steps", "1"]
    argv += ["--hidden", "8", "--embed", "4", "--batch", "2", "--seq-len", "4", "--no-progress"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "", out  # nothing ran: no baseline, no training line
    err = err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tapernn train: error: --cell "), err
    assert says in err[0], err


@pytest.mark.parametrize("spec", ["hqa17_cells:Good", "tapernn.nn:MuFuRu", "tapernn.nn:LSTM"])
def test_a_usable_cell_class_still_resolves(spec, user_cells):
    cls = resolve_cell(spec)
    cls(4, 8)  # (input_size, hidden_size)
