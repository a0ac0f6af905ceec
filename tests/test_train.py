"""`tapernn train`: corpus and batching, a tiny run that learns, exact resume, Ctrl-C, and
one-line errors with exit code 2."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tapernn.apps.command_line import OneLineArgumentParser
from tapernn.apps.data import (
    Vocabulary,
    split_train_validation,
    stdlib_docstrings,
    time_major_batches,
)
from tapernn.apps.data.corpus import _source_files, collect_docstrings
from tapernn.apps.train import add_arguments, main
from tapernn.apps.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "8", "--no-progress"]


def word_text(n_lines: int, seed: int = 0) -> str:
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "cats",
        "sit",
        "on",
        "mats",
    ]
    rnd = random.Random(seed)
    return "\n".join(" ".join(rnd.choice(words) for _ in range(8)) for _ in range(n_lines))


def parse(*argv: str):
    parser = OneLineArgumentParser(prog="tapernn train")
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text(word_text(200), encoding="utf-8")
    return path


# ---- data ------------------------------------------------------------------------------------


def test_corpus_is_deterministic_cached_and_holds_known_text(tmp_path):
    collected = []
    first = stdlib_docstrings(
        cap=60_000, cache_dir=tmp_path / "cache", on_collect=lambda: collected.append(1)
    )
    assert len(first) == 60_000 and collected == [1]
    assert "Record of phased-in incompatible language changes." in first  # __future__, first file
    assert list((tmp_path / "cache").glob("stdlib-docstrings-py*.txt"))
    again = stdlib_docstrings(
        cap=60_000, cache_dir=tmp_path / "cache", on_collect=lambda: collected.append(2)
    )
    assert again == first and collected == [1]  # read from the cache, not collected
    (tmp_path / "file").write_text("x")
    unwritable = tmp_path / "file" / "cache"  # under a regular file: cannot be created
    assert stdlib_docstrings(cap=60_000, cache_dir=unwritable) == first  # collected afresh


def test_corpus_walk_is_sorted_and_skips_tests_and_site_packages():
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p.relative_to(root) for p in _source_files(root)]
    assert len(files) > 200
    assert not [p for p in files if {"test", "tests", "site-packages"} & set(p.parts)]
    assert Path("textwrap.py") in files and files.index(Path("abc.py")) < files.index(Path("os.py"))


def test_collect_docstrings_reads_modules_classes_functions_in_order(tmp_path):
    (tmp_path / "b.py").write_text(
        '"""Module b."""\nclass C:\n    """Class C."""\n    def f(self):\n        """Method f."""\n'
    )
    (tmp_path / "a.py").write_text('def g():\n    """Function g."""\n')
    (tmp_path / "broken.py").write_text("def (:\n")  # unparsable files are skipped
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.py").write_text('"""Test module."""\n')
    text = collect_docstrings(tmp_path, 10**6)
    assert text == "Function g.\n\nModule b.\n\nClass C.\n\nMethod f."
    assert collect_docstrings(tmp_path, 15) == text[:15]


def test_vocabulary_maps_rare_characters_to_unk():
    vocab = Vocabulary.from_text("aaabbbcccz", min_count=3)
    assert vocab.chars == "abc" and len(vocab) == 4
    np.testing.assert_array_equal(vocab.encode("cabz?"), [3, 1, 2, 0, 0])
    assert vocab.decode([1, 2, 3]) == "abc"
    assert vocab.decode([0]) == "\ufffd"


def test_split_keeps_the_tail_for_validation():
    text = "".join(chr(65 + k % 26) for k in range(1000))
    train, val = split_train_validation(text)
    assert train + val == text and len(val) == 50
    assert split_train_validation("x" * 10**7)[1] == "x" * 50_000  # capped


def test_time_major_batches_shapes_shift_and_continuity():
    ids = np.arange(103)
    x, y = time_major_batches(ids, batch=4, seq_len=5)  # streams of 25 -> 5 chunks
    assert x.shape == y.shape == (5, 5, 4)
    np.testing.assert_array_equal(y, x + 1)  # target = next character
    np.testing.assert_array_equal(x[0, 0], [0, 25, 50, 75])  # stream b starts at b * 25
    np.testing.assert_array_equal(x[1, 0], x[0, -1] + 1)  # chunk k+1 continues chunk k
    with pytest.raises(Exception, match="too few"):
        time_major_batches(np.arange(10), batch=4, seq_len=5)


# ---- training --------------------------------------------------------------------------------


def test_tiny_run_learns_and_beats_the_unigram_baseline(text_file, capsys):
    trainer = Trainer(
        parse(
            "--text", str(text_file), "--steps", "80", "--lr", "0.02", "--sample-len", "30", *TINY
        )
    )
    assert trainer.fit() == 0
    losses = trainer.losses
    assert len(losses) == 80
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.5
    ((step, ppl),) = trainer.validation
    assert step == 80 and ppl < trainer.unigram_ppl
    out = capsys.readouterr().out
    assert "validation perplexity" in out and "unigram baseline" in out and "--- sample" in out


@pytest.mark.parametrize("cell", ["seqlstm", "seqgru"])
def test_tensor_modules_train(text_file, cell):
    trainer = Trainer(
        parse(
            "--text",
            str(text_file),
            "--steps",
            "60",
            "--lr",
            "0.02",
            "--cell",
            cell,
            "--layers",
            "2",
            "--sample-len",
            "5",
            *TINY,
        )
    )
    assert trainer.fit() == 0
    assert np.mean(trainer.losses[-10:]) < np.mean(trainer.losses[:10]) - 0.3
    names = list(trainer.lm.model.state_dict())
    assert "1.0.weight" in names and "1.1.bias" in names  # two SeqLSTM/SeqGRU, no Sequencer


def run_steps(text_file, ckpt, steps, *extra):
    trainer = Trainer(
        parse(
            "--text",
            str(text_file),
            "--steps",
            str(steps),
            "--checkpoint",
            str(ckpt),
            "--sample-len",
            "5",
            *extra,
            *TINY,
        )
    )
    assert trainer.fit() == 0
    return trainer


@pytest.mark.parametrize(
    "options",
    [
        ("--cell", "lstm", "--layers", "2", "--dropout", "0.3"),  # RNG state + remembered state
        ("--cell", "gru", "--optim", "sgd", "--no-remember", "--dtype", "float32"),
        ("--cell", "seqlstm", "--layers", "2", "--dropout", "0.3"),  # SeqLSTM's remembered state
    ],
)
def test_resume_equals_an_uninterrupted_run(tmp_path, options):
    text = tmp_path / "t.txt"
    text.write_text(word_text(7), encoding="utf-8")  # ~9 batches/epoch: the runs cross an epoch end
    straight = run_steps(text, tmp_path / "a", 16, *options)
    first = run_steps(text, tmp_path / "b", 8, *options)
    resumed = Trainer(
        parse(
            "--text",
            str(text),
            "--steps",
            "16",
            "--checkpoint",
            str(tmp_path / "b"),
            "--resume",
            "--no-progress",
        )
    )
    assert resumed.step == 8 and resumed.fit() == 0
    assert len(straight.train_x) < 16  # an epoch boundary falls inside the second half
    assert first.losses == straight.losses[:8]
    assert resumed.losses == straight.losses[8:]
    a, b = straight.lm.model.state_dict(), resumed.lm.model.state_dict()
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_custom_cell_from_module_class(tmp_path, monkeypatch, text_file):
    (tmp_path / "my_cells.py").write_text(
        "import tapernn as tn\nfrom tapernn import nn\n\n"
        "class MGU(nn.Cell):\n"
        "    state_names = ('h',)\n"
        "    def __init__(self, input_size, hidden_size):\n"
        "        super().__init__(input_size, hidden_size)\n"
        "        self.w_f = self.parameter('w_f', (input_size + hidden_size, hidden_size))\n"
        "        self.w_h = self.parameter('w_h', (input_size + hidden_size, hidden_size))\n"
        "    def step(self, x, h):\n"
        "        f = tn.sigmoid(tn.concat([x, h], axis=-1) @ self.w_f)\n"
        "        g = tn.tanh(tn.concat([x, f * h], axis=-1) @ self.w_h)\n"
        "        return (1 - f) * h + f * g\n\n"
        "class NotACell:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    trainer = Trainer(
        parse(
            "--text",
            str(text_file),
            "--steps",
            "3",
            "--cell",
            "my_cells:MGU",
            "--sample-len",
            "0",
            *TINY,
        )
    )
    assert trainer.fit() == 0 and len(trainer.losses) == 3
    assert any(type(m).__name__ == "MGU" for m in trainer.lm.cells())


# ---- errors and Ctrl-C ---------------------------------------------------------------------------


def one_line_error(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("tapernn train: error:") and expected in err, err


def test_bad_arguments_give_one_line_errors(tmp_path, capsys, text_file):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ol\xe9\n".encode("latin-1") * 50)
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "notes_cells.py").write_text("class NotACell:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        one_line_error(capsys, ["--hidden", "0"], "must be positive")
        one_line_error(capsys, ["--optim", "rmsprop"], "invalid choice")
        one_line_error(capsys, ["--text", str(tmp_path / "missing.txt")], "cannot read")
        one_line_error(capsys, ["--text", str(tmp_path)], "directory")
        one_line_error(capsys, ["--text", str(tmp_path / "latin1.txt")], "not UTF-8")
        one_line_error(capsys, ["--text", str(tmp_path / "empty.txt")], "empty")
        one_line_error(capsys, ["--text", str(text_file), "--cell", "lstmx"], "unknown cell")
        one_line_error(
            capsys, ["--text", str(text_file), "--cell", "no_such_mod:X"], "cannot import"
        )
        one_line_error(
            capsys, ["--text", str(text_file), "--cell", "notes_cells:NotACell"], "not a"
        )
        one_line_error(capsys, ["--text", str(text_file), "--resume"], "needs --checkpoint")
        one_line_error(
            capsys,
            ["--text", str(text_file), "--resume", "--checkpoint", str(tmp_path / "none")],
            "no checkpoint",
        )
        one_line_error(
            capsys,
            ["--text", str(text_file), "--checkpoint", str(text_file / "sub")],
            "not writable",
        )
        one_line_error(capsys, ["--text", str(text_file), "--seq-len", "5000"], "too few")
    finally:
        sys.path.remove(str(tmp_path))


def test_resume_refuses_changed_options(tmp_path, capsys, text_file):
    run_steps(text_file, tmp_path / "c", 2)
    one_line_error(
        capsys,
        [
            "--text",
            str(text_file),
            "--resume",
            "--checkpoint",
            str(tmp_path / "c"),
            "--hidden",
            "32",
        ],
        "differs from the checkpoint",
    )


def test_ctrl_c_saves_and_exits_cleanly(tmp_path, text_file):
    ckpt = tmp_path / "ck"
    code = "import sys; from tapernn.apps.train import main; sys.exit(main(sys.argv[1:]))"
    cmd = [
        sys.executable,
        "-c",
        code,
        "--text",
        str(text_file),
        "--steps",
        "100000",
        "--checkpoint",
        str(ckpt),
        *TINY,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert (
        "training to step"
        in proc.stdout.readline() + proc.stdout.readline() + proc.stdout.readline()
    )
    time.sleep(1.5)  # let it compile and take some steps
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted at step" in err
    assert (ckpt / "CURRENT").exists()
    resumed = Trainer(
        parse(
            "--text",
            str(text_file),
            "--resume",
            "--checkpoint",
            str(ckpt),
            "--steps",
            "100000",
            "--no-progress",
        )
    )
    assert resumed.step > 0


@pytest.mark.parametrize("use_threadpoolctl", [True, False])
def test_blas_threads_limits_and_restores(monkeypatch, use_threadpoolctl):
    from tapernn.blas import _openblas_libraries, blas_threads

    libraries = _openblas_libraries()
    if not libraries:
        pytest.skip("no OpenBLAS loaded in this process")
    if not use_threadpoolctl:
        monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails: ctypes fallback
    set_, get = libraries[0]
    before = get()
    set_(2)  # a known starting point, also on a machine whose default is one thread
    try:
        with blas_threads(1):
            assert get() == 1
        assert get() == 2
    finally:
        set_(before)


def test_resume_from_another_directory_finds_a_relative_text(tmp_path, monkeypatch, text_file):
    monkeypatch.chdir(text_file.parent)
    run_steps(Path(text_file.name), tmp_path / "r", 2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resumed = Trainer(
        parse(
            "--resume",
            "--checkpoint",
            str(tmp_path / "r"),
            "--steps",
            "3",
            "--no-progress",
            "--sample-len",
            "0",
        )
    )
    assert resumed.step == 2 and resumed.fit() == 0 and resumed.step == 3


def test_model_is_an_alias_of_cell():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--model", "seqlstm"]).cell == "seqlstm"
    assert parser.parse_args(["--cell", "gru"]).cell == "gru"


@pytest.mark.parametrize(
    "steps, shown",
    [
        (1, "train loss {0:.3f} (1 step)"),
        (5, "train loss {1:.3f} (first 2) -> {2:.3f} (last 2)"),
        (21, "train loss {3:.3f} (first 10) -> {4:.3f} (last 10)"),
    ],
)
def test_summary_compares_windows_that_do_not_overlap(text_file, steps, shown):
    """Under 20 steps, "first 10" and "last 10" were the same steps: the summary printed one mean
    twice as if it were a trend. The windows are halves of the run now, never overlapping."""
    trainer = Trainer(
        parse("--text", str(text_file), "--steps", str(steps), "--sample-len", "0", *TINY)
    )
    trainer.losses = [float(k) for k in range(steps)]
    losses = trainer.losses
    means = [
        losses[0],
        np.mean(losses[:2]),
        np.mean(losses[-2:]),
        np.mean(losses[:10]),
        np.mean(losses[-10:]),
    ]
    line = trainer._summary(0, 1.0)
    assert shown.format(*means) in line, line
