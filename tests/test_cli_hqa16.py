"""hqa16's QA round of the command line: a `--model module:factory` that is malformed, fails to
import or raises, and a Cell without `step`, each one line (on main: tracebacks)."""

import sys

import numpy as np
import pytest

from tapernn import nn
from tapernn.apps.cli import main
from tapernn.errors import BuildError


def _one_line(capsys, command):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tapernn {command}: error: "), err
    return err[0]


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    (tmp_path / "hqa16_broken.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "hqa16_factories.py").write_text(
        "def raises(steps, batch, size):\n    return {}['no such key']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("hqa16_broken", "hqa16_factories"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("command", ["inspect", "graph"])
@pytest.mark.parametrize(
    "model, says",
    [
        (":y", "--model ':y': expected path.to.module:name"),
        ("os:", "--model 'os:': expected path.to.module:name"),
        ("hqa16_broken:f", "import 'hqa16_broken' for --model hqa16_broken:f: RuntimeError: boom"),
        ("os:no_such_name", "module 'os' has no 'no_such_name' (--model os:no_such_name)"),
        ("hqa16_factories:raises", "'hqa16_factories:raises' raised KeyError: 'no such key'"),
        ("os.path:join", "'os.path:join' raised TypeError"),
    ],
)
def test_a_bad_model_factory_is_one_line(command, model, says, user_modules, capsys, tmp_path):
    """On main: ':y' was ValueError, the broken module RuntimeError, the factories' own errors
    theirs -- all tracebacks out of main()."""
    argv = [command, "--model", model, "--steps", "2"]
    if command == "graph":
        argv += ["-o", str(tmp_path / "g.dot")]
    assert main(argv) == 2
    assert says in _one_line(capsys, command)
    assert not (tmp_path / "g.dot").exists()


def test_a_cell_without_step_says_so():
    """On main: AttributeError: 'C' object has no attribute '_cell_step'."""

    class NoStep(nn.Cell):
        state_names = ("h",)

    for cell in (NoStep(3, 4), nn.Cell(3, 4)):
        with pytest.raises(BuildError, match=r"does not define step\(self, x, \*state\)"):
            nn.Sequencer(cell).forward(np.ones((2, 1, 3)))


def test_train_with_the_base_cell_is_one_line(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("abc def ghi " * 200)
    argv = ["train", "--text", str(text), "--cell", "tapernn.nn:Cell", "--steps", "1"]
    argv += ["--hidden", "8", "--embed", "4", "--batch", "2", "--seq-len", "4", "--no-progress"]
    assert main(argv) == 2  # (hqa17: refused with the options, tests/test_cli_hqa17.py)
    assert "nn.Cell does not define step" in _one_line(capsys, "train")
