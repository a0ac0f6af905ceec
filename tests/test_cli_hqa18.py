"""hqa18's QA round of the command line. A Ctrl-C while `python -m tapernn` / the `tapernn` script
is still importing the package (a second or more on a loaded machine, before cli.main runs)
printed Python's traceback of the import it hit and exited -2 (killed by SIGINT) on main; now
one line and exit code 130. Sizes no memory holds (`--hidden 999999999`) were a MemoryError
traceback on main; now one line, exit code 1."""

import pathlib
import signal
import subprocess
import sys

import pytest

import tapernn
from tapernn import interrupt
from tapernn.apps.cli import main

ROOT = pathlib.Path(tapernn.__file__).resolve().parents[1]  # (the tree under test: cwd of -m)


@pytest.fixture
def pythons_ctrl_c():
    """Python's own SIGINT handler for the test, whatever this process inherited (a run started
    in the background, `nohup` or CI, has SIGINT ignored: then nothing is installed, as meant),
    the inherited one back after."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # (the child's Python installs its own handler)


@pytest.mark.parametrize(
    "argv, orig, command",
    [
        (["/usr/bin/tapernn", "train"], None, True),
        (["tapernn"], None, True),
        (["-m", "inspect"], ["python", "-m", "tapernn", "inspect"], True),
        (["-m"], ["python", "-X", "importtime", "-mtapernn.apps.cli"], True),
        (["-m", "x"], ["python", "-m", "tapernnx", "x"], False),
        (["-m"], ["python", "-m", "tapernn.apps.tutorial"], False),
        (["-m"], ["python", "-m", "pytest"], False),
        (["script.py"], ["python", "script.py"], False),
        (["-c"], ["python", "-c", "import tapernn"], False),
        ([], [], False),
    ],
)
def test_is_command(monkeypatch, argv, orig, command):
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig if orig is not None else ["python", *argv])
    assert interrupt.is_command() is command


@pytest.mark.usefixtures("pythons_ctrl_c")
def test_a_program_keeps_pythons_ctrl_c(monkeypatch):
    """Only the command's process changes the handler; main() puts Python's back."""
    monkeypatch.setattr(interrupt, "_command", [False])  # (set by quiet_while_starting below)
    monkeypatch.setattr(sys, "argv", ["script.py"])
    interrupt.quiet_while_starting()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(sys, "argv", ["tapernn"])
    try:
        interrupt.quiet_while_starting()
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        interrupt.started()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # (an ignored Ctrl-C stays ignored)
        interrupt.quiet_while_starting()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_ctrl_c_while_importing_is_one_line_and_130():
    """The SIGINT is sent when the import of tapernn.errors (the package's first modules after
    the handler) has finished, with the op set, nn and the apps still to import (~1 s of CPU)."""
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "tapernn", "inspect", "--steps", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,  # noqa: PLW1509 -- one signal() call before exec
    )
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.split("|")[-1].strip() == "tapernn.errors":
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert seen and seen[-1].split("|")[-1].strip() == "tapernn.errors", "".join(seen[-5:])
    lines = [line for line in err.splitlines() if "import time:" not in line and line.strip()]
    assert proc.returncode == 130, (proc.returncode, lines[-5:])
    assert lines == ["tapernn: interrupted while starting"], lines


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "--hidden", "999999999"],
        ["graph", "--hidden", "999999999", "-o", "{tmp}/g.svg"],
        ["bench", "--configs", "99999999,99999,99999", "--budget", "1"],
    ],
)
def test_sizes_no_memory_holds_are_one_line(argv, capsys, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tapernn {argv[0]}: error: out of memory: "), err
    assert "Unable to allocate" in err[0]
    assert not list(tmp_path.iterdir())  # (nothing written)


@pytest.mark.usefixtures("pythons_ctrl_c")
def test_the_commands_imports_keep_the_one_line_ctrl_c(monkeypatch):
    """build_parser imports every command's module (~0.1-1 s): a Ctrl-C there is still the
    one-line exit; the command itself gets KeyboardInterrupt (its own clean message). (On the
    first version of this branch main() handed Ctrl-C back before build_parser: a traceback.)"""
    from tapernn.apps import cache_cli, cli

    seen = {}
    real = cli.build_parser

    def parser():
        seen["imports"] = signal.getsignal(signal.SIGINT)
        return real()

    def run(args):
        seen["command"] = signal.getsignal(signal.SIGINT)
        return 0

    monkeypatch.setattr(cli, "build_parser", parser)
    monkeypatch.setattr(cache_cli, "run", run)
    monkeypatch.setattr(sys, "argv", ["tapernn", "cache"])
    try:
        interrupt.quiet_while_starting()
        assert cli.main(["cache"]) == 0
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert seen["imports"] is interrupt._quit
    assert seen["command"] is signal.default_int_handler
