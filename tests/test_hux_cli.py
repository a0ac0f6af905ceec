"""The `tapernn` command walked as a new user would (hux): each test is a defect found there."""

import os
import runpy
import time
from pathlib import Path

import numpy as np
import pytest

from tapernn.apps.cli import build_parser, main
from tapernn.apps.models import MODELS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("option", ["--steps", "--batch", "--hidden"])
@pytest.mark.parametrize("value", ["0", "-2", "x"])
def test_graph_sizes_are_refused_like_inspects(capsys, tmp_path, option, value):
    """`graph --steps 0` said "--steps, --batch and --hidden must be positive" (which one, what
    was given?) and `graph --steps x` was argparse's "invalid int value"; now both commands name
    the option and the value, as `inspect` did."""
    for command in ("graph", "inspect"):
        argv = [command, option, value]
        if command == "graph":
            argv += ["-o", str(tmp_path / "g.dot")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(
            f"tapernn {command}: error: argument {option}: expected a positive integer, got"
        ), err[0]
        assert value in err[0]
    assert not (tmp_path / "g.dot").exists()


@pytest.mark.parametrize("command", ["graph", "inspect"])
def test_model_help_lists_every_model_the_command_takes(command):
    """--model's help left out seqlstm and seqgru, which both commands build."""
    subs = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices)
    help_text = " ".join(subs.choices[command].format_help().split())
    for name in MODELS:
        assert name in help_text.replace("- ", "-"), name


def test_bench_unroll_help_says_its_default_and_what_auto_does():
    """`bench --unroll` said "auto (the default rule by length)": no "(default: ...)" like every
    other option, and Sequencers roll at every length now (unroll=None), no rule by length."""
    subs = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices)
    help_text = " ".join(subs.choices["bench"].format_help().split())
    at = help_text.index("--unroll {auto,rolled,unrolled} ")
    line = help_text[at : help_text.index("--no-grad-input", at)]
    assert "(default: auto)" in line and "by length" not in line and "rolled at every" in line


def test_cache_says_where_its_folder_comes_from(tmp_path, monkeypatch, capsys):
    """With $TAPERNN_KERNEL_CACHE set, `tapernn cache` told the user to set it "to move it"; and
    one module removed read "removed 1 modules"."""
    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path / "k"))
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"kernel cache: {tmp_path / 'k'} (from $TAPERNN_KERNEL_CACHE, not created yet)" in out
    (tmp_path / "k").mkdir()
    kernel = tmp_path / "k" / f"tapernn_k6_{7:020x}.py"  # (a kernel module's name, used a day ago)
    kernel.write_text("# a kernel\n")
    os.utime(kernel, (time.time() - 86400,) * 2)
    assert main(["cache", "--clear"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("removed 1 module, ") and "(from $TAPERNN_KERNEL_CACHE)" in out
    monkeypatch.delenv("TAPERNN_KERNEL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["cache"]) == 0
    assert "(set $TAPERNN_KERNEL_CACHE to move it, not created yet)" in capsys.readouterr().out


def test_song_acceptor_example_uses_the_tutorials_word_ids(capsys):
    """examples/song_acceptor.py renumbered the vocabulary (15 words, "Hey" = 6 but "just" = 8):
    its 5-grams are now the notebook's ids minus one, as `tapernn demo` prints them, and its
    LookupTable has the notebook's 16 rows."""
    ns = runpy.run_path(str(ROOT / "examples" / "song_acceptor.py"), run_name="__main__")
    notebook = [[7, 1, 12, 15, 2], [11, 4, 8, 14, 10], [16, 6, 5, 3, 13]]  # (its printed songData)
    np.testing.assert_array_equal(ns["songs"].T, np.array(notebook) - 1)
    assert ns["model"].get(0).weight.data.shape == (16, 6)
    assert "errors 0  (done)" in capsys.readouterr().out


CELL = """
import tapernn as tn
from tapernn import nn


class Elman(nn.Cell):
    state_names = ("h",)

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = self.parameter("w", (input_size + hidden_size, hidden_size))

    def step(self, x, h):
        return tn.tanh(tn.concat([x, h], axis=-1) @ self.w)
"""


def test_graph_and_inspect_take_a_custom_cell_as_train_does(tmp_path, monkeypatch, capsys):
    """`--model module:Class` with an nn.Cell subclass (what `tapernn train --cell` takes) said
    "must be a function factory(steps, batch, size) ...: too many positional arguments"; now it
    draws / reports Sequencer(Class(hidden, hidden)), one cluster per step."""
    (tmp_path / "hux_cell.py").write_text(CELL)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "cell.dot"
    assert main(["graph", "--model", "hux_cell:Elman", "--steps", "3", "-o", str(out)]) == 0
    dot = out.read_text()
    assert all(f"t = {t}" in dot for t in range(3)) and "Elman" in dot
    assert main(["inspect", "--model", "hux_cell:Elman", "--steps", "4", "--hidden", "5"]) == 0
    assert "nn.Sequencer @ nn.Elman(5 -> 5): T=4, B=4, H=5" in capsys.readouterr().out
