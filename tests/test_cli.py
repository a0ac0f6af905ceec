"""The command line and the examples, run as a user would."""

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tapernn.apps.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_the_tutorial(capsys):
    assert main(["demo", "--diagram", ""]) == 0
    out = capsys.readouterr().out
    assert "=== Stepping an LSTM ===" in out and "The tutorial ran end to end." in out
    # the song ids are the notebook's (its table lists "just" twice: the later id, 12, wins)
    # minus one; before, a renumbered vocabulary printed other ids
    assert "[[ 6  0 11 14  1]\n [10  3  7 13  9]\n [15  5  4  2 12]]" in out
    # (hux) the sizes the notebook's cells print (its tables of steps: "1 : DoubleTensor - size:
    # 1x5", ...), section by section
    sections = dict(part.split(" ===\n", 1) for part in out.split("\n=== ")[1:])
    notebook = {
        "lstm.outputs and lstm.cells (h_t and c_t, 0-based)": [
            "[(5,), (5,), (5,)] [(5,), (5,), (5,)]"
        ],
        "Sequencer over a Linear": ["[(1, 5), (1, 5), (1, 5)]"],
        "Sequencer over an LSTM": ["[(1, 5), (1, 5), (1, 5)]"],
        "SplitTable in front of a Sequencer": ["[(5,), (5,), (5,)]"],
        "Batching: each step is a (batch, features) matrix": ["[(2, 5), (2, 5), (2, 5)]"] * 2,
        "Batched song acceptor (time-major ids: (5, 3))": [
            "[(3, 6), (3, 6), (3, 6), (3, 6), (3, 6)]"
        ],
        "FastLSTM: no peepholes, fused gates": ["[(2, 5), (2, 5)]"],
        "Stacked LSTMs": ["[(3, 6), (3, 6), (3, 6), (3, 6), (3, 6)]"],
        "Stacked LSTMs with Dropout between layers": ["[(3, 6), (3, 6), (3, 6), (3, 6), (3, 6)]"],
    }
    for title, lines in notebook.items():
        assert [line for line in sections[title].splitlines() if line.startswith("[(")] == lines
    stepped = sections["Stepping an LSTM"].splitlines()[-3:]  # the 3x5 outputs tensor
    assert [len(row.strip("[] ").split()) for row in stepped] == [5, 5, 5]
    song = sections["Song-lyrics acceptor (LookupTable -> LSTM -> Linear -> Sigmoid)"]
    assert len(re.findall(r"^\[0\.\d+\]$", song, re.MULTILINE)) == 1  # firstSongPred: size 1


def test_inspect_prints_a_compile_report(capsys):
    assert main(["inspect", "--model", "tutorial-acceptor", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "kernels per call" in out and "saved for backward bytes" in out


def test_bad_arguments_exit_2_with_one_line(capsys):
    assert main(["inspect", "--model", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tapernn inspect: error: unknown model 'nope'")
    proc = subprocess.run(
        [sys.executable, "-m", "tapernn", "inspect", "--steps", "-3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert (
        proc.returncode == 2
        and "positive integer" in proc.stderr
        and "Traceback" not in proc.stderr
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--configs", "1,2"],
        ["--configs", "1,0,3"],
        ["--configs", "a,b,c"],
        ["--threads", "0"],
        ["--budget", "-1"],
        ["--budget", "nan"],
    ],
)
def test_bench_rejects_bad_arguments_in_one_line(argv, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tapernn bench: error: argument {argv[0]}")


def test_song_acceptor_example_reaches_zero_error(capsys):
    runpy.run_path(str(ROOT / "examples" / "song_acceptor.py"), run_name="__main__")
    assert "(done)" in capsys.readouterr().out


def test_models_build_and_run():
    from tapernn.apps.models import MODELS, build_model

    for name in MODELS:
        model, x, g = build_model(name, steps=3, batch=2, size=4)
        out = model.forward(x)
        model.backward(x, g)
        assert np.all(
            np.isfinite(
                np.concatenate([np.ravel(o) for o in (out if isinstance(out, list) else [out])])
            )
        )


def test_demo_writes_the_acceptor_diagram(tmp_path, capsys):
    import shutil

    target = tmp_path / ("acceptor.svg" if shutil.which("dot") else "acceptor.dot")
    assert main(["demo", "--diagram", str(target)]) == 0
    assert target.exists() and target.stat().st_size > 500
    assert "unrolled diagram" in capsys.readouterr().out


def test_graph_command_writes_each_format(tmp_path):
    import json
    import shutil

    out = tmp_path / "g.json"
    assert main(["graph", "--model", "tutorial-transducer", "--view", "both", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {n["step"] for n in data["nodes"]} >= {0, 1, 2}
    dot_file = tmp_path / "g.dot"
    assert main(["graph", "--model", "gru", "--level", "op", "-o", str(dot_file)]) == 0
    assert "cluster_step_2" in dot_file.read_text()
    if shutil.which("dot"):
        svg = tmp_path / "g.svg"
        assert main(["graph", "--model", "tutorial-acceptor", "-o", str(svg)]) == 0
        assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    assert main(["graph", "-o", str(tmp_path / "g.bmp")]) == 2


def test_graph_to_a_folder_says_it_is_a_folder(tmp_path, capsys):
    # (before: a folder without a suffix gave "unknown output format ''")
    folder = tmp_path / "x.svg"
    folder.mkdir()
    for target in (tmp_path, folder):
        assert main(["graph", "-o", str(target)]) == 2
        err = capsys.readouterr().err
        assert "is a folder" in err and "graph.svg" in err


def _no_graphviz(monkeypatch, tmp_path):
    """PATH without the Graphviz `dot` program (an empty folder)."""
    import shutil

    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("dot") is None


def test_demo_without_graphviz_writes_the_dot_source_and_says_how_to_render(
    tmp_path, monkeypatch, capsys
):
    from tapernn.apps import tutorial
    from tapernn.apps.models import build_model

    model, x, _ = build_model("tutorial-acceptor", 3, 2, 4)
    model.forward(x)
    monkeypatch.setattr(tutorial, "main", lambda: model)  # the full tutorial is tested above
    _no_graphviz(monkeypatch, tmp_path)
    target = tmp_path / "acceptor.svg"
    assert main(["demo", "--diagram", str(target)]) == 0
    out = capsys.readouterr().out
    source = tmp_path / "acceptor.dot"
    assert source.read_text().startswith("digraph") and not target.exists()
    assert f"dot -Tsvg {source} -o {target}" in out and "apt-get install graphviz" in out


def test_version(capsys):
    import tapernn

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tapernn {tapernn.__version__}"


def test_every_option_help_says_its_default():
    import argparse

    from tapernn.apps.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in subs.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            if "default" not in text:
                missing.append(f"{name} {action.option_strings[0]}: {text!r}")
    assert not missing, missing
    assert "(default: 2)" in subs.choices["graph"].format_help()


def test_a_closed_pipe_ends_quietly():
    """`tapernn inspect | head -1`: the reader has gone, so the command stops without a traceback
    (Unix tools exit quietly on a broken pipe); the pipe here is closed before anything is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tapernn", "inspect", "--steps", "2"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`


def test_a_model_factory_of_the_wrong_kind_says_what_is_expected(capsys):
    # (before: `--model os:getcwd` ended in a bare TypeError traceback; `os:sep` likewise)
    for name in ("os:getcwd", "os:sep", "json:dumps"):
        assert main(["inspect", "--model", name]) == 2
        err = capsys.readouterr().err
        assert "factory(steps, batch, size) -> (model, input, grad_output)" in err, err
