"""A cold switch call waits for the packed GEMM's serial driver alone (BENCHMARKS.md "hcold8"):
pack_panels' numba packs (pack_rows, pack_cols) are a job of their own after the driver's, in
the background worker -- NumPy's copies pack meanwhile, the same panels (tests/test_pack_rows.py)
-- and compiled in place with the driver without background compilation."""

import threading

import numpy as np
import pytest

from tapernn.backends import background, numba_available, packed

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.skipif(not packed.available(), reason="no packed kernel on this CPU"),
]

KEY = ((np.dtype(np.float64).str,),)


@pytest.fixture
def held_packs(monkeypatch):
    """The packs' compiles blocked until `release` is set (at most 60 s); yields the event."""
    release = threading.Event()
    real = packed._pack_signature

    def blocked(key, layout="C"):
        release.wait(60)
        return real(key, layout)

    monkeypatch.setattr(packed, "_pack_signature", blocked)
    yield release
    release.set()


def test_the_driver_is_ready_before_its_packs(monkeypatch, held_packs):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    handle = packed._Handle(packed.isa())  # (a fresh one: its packs not made in this process)
    monkeypatch.setitem(packed._HANDLES, packed.isa(), handle)  # (pack_panels' too)
    ready = background.request(handle, KEY)
    # (before: the packs compiled in the driver's job, which waited for `held_packs`)
    assert ready.wait(50), "the driver's job waited for its packs"
    assert handle.has(KEY), handle.error
    assert KEY not in handle.packs.types  # (their job waits behind the held compiles)
    w = np.random.default_rng(0).standard_normal((37, 29))
    want = packed.pack_panels(w)  # (NumPy's copy meanwhile: the handle's packs are not made)
    held_packs.set()
    assert background.wait(120)
    assert KEY in handle.packs.types and not handle.packs.error
    out = np.full(want.shape, np.nan)
    np.testing.assert_array_equal(packed.pack_panels(w, out), want)


def test_without_background_compilation_the_packs_come_with_the_driver(monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    handle = packed._Handle(packed.isa())
    before = background.activity()[0]
    handle.prepare(KEY)
    assert handle.has(KEY) and KEY in handle.packs.types, handle.error or handle.packs.error
    assert background.activity()[0] == before  # (nothing queued)
