"""A Ctrl-C while the `tapernn` command (or `python -m tapernn`) is still importing the package
-- numpy, the op set, the modules: a second or more on a loaded machine, before the command's
own Ctrl-C handling (apps/cli.py) runs -- prints one line and exits 130, the shell's code for
SIGINT, instead of Python's traceback of whichever import it interrupted. Nothing is written
while importing (kernel files are written whole: fileio.atomic_write). Once the command is
done (`finished`), a Ctrl-C is ignored: the interpreter's teardown (~0.5 s, its garbage
collection of the modules) runs no Python signal handler and would die of SIGINT (exit -2)
after the command's files were written. Only in that process: a program importing tapernn
keeps Python's KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = 130  # 128 + SIGINT


def is_command() -> bool:
    """Whether this process is the `tapernn` command: its script, `python -m tapernn` or
    `python -m tapernn.apps.cli` (whose main hands Ctrl-C back: `started`; not another module's
    `__main__`, which would keep this handler)."""
    argv = sys.argv
    if argv and os.path.basename(argv[0]) in ("tapernn", "tapernn.exe"):
        return True
    if not argv or argv[0] != "-m":  # (sys.argv[0] is "-m" while runpy imports the package)
        return False
    flags = [a for a in getattr(sys, "orig_argv", ()) if a.startswith("-m")]
    if not flags:
        return False
    module = flags[0][2:] or _after(sys.orig_argv, flags[0])
    return module in ("tapernn", "tapernn.apps.cli")


def _after(items: list, item: str) -> str:
    k = items.index(item) + 1
    return items[k] if k < len(items) else ""


def _quit(signum: int, frame: object) -> None:
    try:
        sys.stderr.write("\ntapernn: interrupted while starting\n")
        sys.stderr.flush()
    finally:
        os._exit(INTERRUPTED)


_command = [False]  # whether this process is the command, known while importing (is_command)


def quiet_while_starting() -> None:
    """Install the one-line Ctrl-C for the import, if this process is the command and Ctrl-C
    has Python's default handler (not one the caller installed, nor SIG_IGN)."""
    _command[0] = is_command()
    if _command[0] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _quit)


def started() -> None:
    """The command runs: Ctrl-C raises KeyboardInterrupt again (the command handles it)."""
    if signal.getsignal(signal.SIGINT) is _quit:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def finished() -> None:
    """The command returned (or raised): its exit code stands; a Ctrl-C while Python shuts
    down is ignored (before its output is flushed, so a reader that saw the output sees it).
    Known from the import (`_command`: `python -m` has replaced sys.argv[0] since)."""
    if _command[0] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
