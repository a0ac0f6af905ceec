"""LLVM's vectoriser remarks, printed to stderr whenever a step loop compiles with a forced
vector width (numba_interleave), never reach the user; anything else written to stderr in the
meantime does, after the compile."""

import os

import pytest

from tapernn.backends import numba_interleave

REMARK = b"remark: <unknown>:0:0: loop not vectorized: runtime pointer checks needed.\n"


def test_remarks_are_dropped_and_other_lines_kept(capfd):
    with numba_interleave._remarks_dropped():
        os.write(2, REMARK)
        os.write(2, b"a user's line\n")
        os.write(2, REMARK)
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "a user's line\nafter\n"


def test_a_forced_width_compiles_with_remarks_dropped(capfd, monkeypatch):
    pytest.importorskip("numba")
    widths = []
    monkeypatch.setattr(numba_interleave, "_set", lambda v: True)
    monkeypatch.setattr(numba_interleave, "_set_width", lambda v: widths.append(v) or True)
    with numba_interleave.interleaved(2, 16):
        os.write(2, REMARK)  # (as LLVM's diagnostic printer writes during the compile)
    with numba_interleave.interleaved(2, 0):  # (no width forced: nothing redirected)
        os.write(2, b"unforced\n")
    assert widths == [16, 0]
    assert capfd.readouterr().err == "unforced\n"


def test_a_raise_in_the_block_restores_stderr(capfd):
    with pytest.raises(KeyError), numba_interleave._remarks_dropped():
        os.write(2, b"kept\n")
        raise KeyError("a failed compile")
    os.write(2, b"restored\n")
    assert capfd.readouterr().err == "kept\nrestored\n"


def test_no_temporary_file_leaves_stderr_alone(capfd, monkeypatch):
    def no_file():
        raise OSError("no space left on device")

    monkeypatch.setattr(numba_interleave.tempfile, "TemporaryFile", no_file)
    with numba_interleave._remarks_dropped():
        os.write(2, REMARK)  # (printed: nowhere else to put it)
    assert capfd.readouterr().err == REMARK.decode()
