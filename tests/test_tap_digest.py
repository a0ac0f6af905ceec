"""get_grad_hidden_state's fingerprint of the arrays it holds by reference (nn/tap_digest.py,
issue 19, branch htap): the numba digest ("n") against a plain-Python rendering of its formula,
and both kinds ("n", "z": zlib's CRC-32 + XOR) seeing one changed bit anywhere (the tail bytes
of a length that is no multiple of 8 too), rows permuted in place, and not the same bytes
written again; the kind a fingerprint was taken with is the one it is checked with; unaligned
data takes "z"; a NumPy-only process never imports numba for it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tapernn
from tapernn.nn import tap_digest
from tapernn.nn.tap_digest import fingerprint, unchanged

M64 = (1 << 64) - 1
K1, K2 = 0x9E3779B97F4A7C15, 0xD6E8FEB86659FD93


def _loaded():
    tap_digest.KERNEL.prepare(())
    assert tap_digest.KERNEL.fn is not None, tap_digest.KERNEL.error
    return tap_digest.KERNEL.fn


def _python_digest(words):
    a = b = 0
    for i, w in enumerate(int(v) for v in words):
        z = ((w ^ (i * K1 & M64)) * K2) & M64
        a = (a + (z ^ (z >> 32))) & M64
        b ^= w
    return a, b


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 1003])
def test_the_numba_digest_is_its_formula(n):
    fn = _loaded()
    words = np.random.default_rng(n).integers(0, 1 << 63, n, dtype=np.uint64) * np.uint64(2)
    words ^= np.random.default_rng(n + 1).integers(0, 2, n, dtype=np.uint64)
    got = fn(words)
    assert (int(got[0]), int(got[1])) == _python_digest(words)


@pytest.fixture(params=["n", "z"])
def kind(request, monkeypatch):
    if request.param == "n":
        _loaded()
    else:
        monkeypatch.setattr(tap_digest, "kernel", lambda: None)
    return request.param


@pytest.mark.parametrize("shape", [(64, 33), (13,), (5, 3)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int8])
def test_any_changed_bit_is_seen(kind, shape, dtype):
    a = (np.random.default_rng(0).standard_normal(shape) * 50).astype(dtype)
    fp = fingerprint(a)
    assert fp[3] == kind and unchanged(a, fp)
    raw = a.reshape(-1).view(np.uint8)
    for byte in sorted({0, 1, raw.size // 2, raw.size - 8, raw.size - 3, raw.size - 1}):
        if 0 <= byte < raw.size:
            for bit in (0, 7):
                raw[byte] ^= np.uint8(1 << bit)
                assert not unchanged(a, fp), (byte, bit)
                raw[byte] ^= np.uint8(1 << bit)
                assert unchanged(a, fp)  # (the same bytes again)


def test_rows_permuted_in_place_and_words_swapped_are_seen(kind):
    a = np.random.default_rng(1).standard_normal((16, 8))
    fp = fingerprint(a)
    a[:] = a[np.r_[1, 0, 2:16]]  # two rows swapped in place
    assert not unchanged(a, fp)
    a[:] = a[np.r_[1, 0, 2:16]]
    assert unchanged(a, fp)
    flat = a.reshape(-1)
    flat[3], flat[100] = flat[100], flat[3]
    assert not unchanged(a, fp)
    b = a.copy()
    b[...] = 0
    zero = fingerprint(b)
    b.reshape(-1)[:2] = [np.float64(-0.0), 0.0]  # (a sign bit alone)
    assert not unchanged(b, zero)


def test_another_array_with_the_same_bytes_is_not_the_same(kind):
    a = np.arange(24.0)
    b = a.copy()
    assert fingerprint(a)[3:] == fingerprint(b)[3:] and not unchanged(b, fingerprint(a))


def test_a_fingerprint_is_checked_with_its_own_kind(monkeypatch):
    _loaded()
    a = np.random.default_rng(2).standard_normal(40)
    monkeypatch.setattr(tap_digest, "kernel", lambda: None)
    old = fingerprint(a)
    monkeypatch.undo()
    new = fingerprint(a)
    assert (old[3], new[3]) == ("z", "n")
    assert unchanged(a, old) and unchanged(a, new)
    a[7] += 1.0
    assert not unchanged(a, old) and not unchanged(a, new)


def test_unaligned_data_takes_zlib():
    _loaded()
    a = np.random.default_rng(3).standard_normal(9).astype(np.float32)[1:]  # (4 bytes in)
    assert a.__array_interface__["data"][0] % 8 == 4
    fp = fingerprint(a)
    assert fp[3] == "z" and unchanged(a, fp)


def test_read_only_data_takes_zlib():
    """(the kernel's one signature is of writeable words: no second compile in the call)"""
    fn = _loaded()
    a = np.random.default_rng(4).standard_normal(16)
    a.flags.writeable = False
    fp = fingerprint(a)
    assert fp[3] == "z" and unchanged(a, fp)
    assert len(fn.signatures) == 1


def test_a_numpy_only_process_does_not_import_numba():
    code = (
        "import sys, numpy as np\n"
        "from tapernn.nn.tap_digest import fingerprint\n"
        "assert fingerprint(np.ones(64))[3] == 'z'\n"
        "assert 'numba' not in sys.modules\n"
    )
    root = str(Path(tapernn.__file__).resolve().parents[1])  # (this checkout's package)
    env = dict(os.environ, PYTHONPATH=root)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)
