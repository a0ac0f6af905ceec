"""hqa19's QA round of the command line. A Ctrl-C landing as a command exits -- its file written
whole and its output printed, during the interpreter's ~0.5 s teardown, where Python runs no
signal handler -- killed the process by SIGINT (exit -2) on main; now the command's own exit
code stands (interrupt.finished ignores Ctrl-C from there)."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest

import tapernn
from tapernn import interrupt
from tapernn.apps.cli import main

ROOT = pathlib.Path(tapernn.__file__).resolve().parents[1]  # (the tree under test: cwd of -m)


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # (the child's Python installs its own handler)


def test_ctrl_c_after_the_output_keeps_the_exit_code(tmp_path):
    """The SIGINT is sent once `wrote ...` is read: stdout is a pipe, so the child has flushed
    it after the command returned (cli.main), with the teardown still to run -- unless Python
    writes stdout unbuffered (PYTHONUNBUFFERED, as in some CI shells: the line then leaves at
    the print, the command still running, and a Ctrl-C there rightly exits 130)."""
    path = tmp_path / "g.dot"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tapernn", "graph", "--model", "rnn", "-o", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_sigint_default,  # noqa: PLW1509 -- one signal() call before exec
    )
    line = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert line.strip() == f"wrote {path}", (line, err)
    assert (proc.returncode, err) == (0, ""), (proc.returncode, err[-500:])
    assert path.read_text().startswith("digraph")


@pytest.fixture
def pythons_ctrl_c():
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.usefixtures("pythons_ctrl_c")
@pytest.mark.parametrize("command", [True, False])
def test_only_the_command_ignores_ctrl_c_once_done(monkeypatch, tmp_path, command):
    """A program calling main() (a test, a notebook) keeps Python's Ctrl-C after it."""
    monkeypatch.setattr(interrupt, "_command", [command])
    assert main(["graph", "--model", "rnn", "-o", str(tmp_path / "g.dot")]) == 0
    want = signal.SIG_IGN if command else signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is want


@pytest.mark.parametrize("command", ["inspect", "graph"])
def test_backend_flag_and_option_that_disagree_are_refused(capsys, tmp_path, command):
    """`--backend numpy --option backend=numba` ran on NumPy on main, the option dropped
    without a word; the same value twice is one choice."""
    out = ["-o", str(tmp_path / "g.dot")] if command == "graph" else []
    argv = [command, "--model", "rnn", "--steps", "2", *out, "--backend", "numpy"]
    assert main([*argv, "--option", "backend=numba"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"tapernn {command}: error: --backend numpy and --option backend=numba disagree: give one"
    )
    assert not (tmp_path / "g.dot").exists()
    assert main([*argv, "--option", "backend=numpy"]) == 0


@pytest.mark.parametrize(
    "level, steps, collapse, noted",
    [("op", 17, False, True), ("op", 16, False, False), ("op", 40, True, False)]
    + [("module", 65, False, True), ("module", 64, False, False)],
)
def test_a_wide_unrolled_diagram_says_collapse_before_dot_runs(
    monkeypatch, capsys, tmp_path, level, steps, collapse, noted
):
    """On main nothing was said while dot laid out a T = 200 op-level diagram for 7 minutes."""
    from tapernn import export

    monkeypatch.setattr(export, "render", lambda model, path, **kw: path.write_text("<svg/>"))
    argv = ["graph", "--model", "rnn", "--level", level, "--steps", str(steps)]
    assert main([*argv, "-o", str(tmp_path / "g.svg"), *(["--collapse"] * collapse)]) == 0
    out = capsys.readouterr().out
    assert ("--collapse draws the step template once" in out) is noted, out
