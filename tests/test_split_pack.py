"""A split loop's packed step weight made by both threads in the halves' own hand-off
(tapernn/split_pack.py): the same bits as the caller's whole pack (split_pack off) and the
unsplit loop, for weights changed between calls by the user in place; a prologue of anything
else than one pack keeps the caller's; a pack that fails on either thread raises, never hangs."""

import threading

import pytest
from test_batch_split import CELLS, D, T, equal, model, train

from tapernn import own_threads, split_pack
from tapernn.backends import numba_available

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
    pytest.mark.usefixtures("numba_now"),  # (conftest: kernels compiled at first calls)
]


def _train(monkeypatch, m, x, g, on=True):
    """train(m, x, g) with split_pack `on` (read when a split loop first runs split)."""
    monkeypatch.setattr(split_pack, "ENABLED", [on])
    return train(m, x, g)


def test_both_threads_pack_the_bits_of_one(monkeypatch, rng):
    x, g = rng.standard_normal((T, 8, D)), rng.standard_normal((T, 8, 130))
    make = CELLS["fastlstm"][0]
    a, b, c = model(make, "on"), model(make, "on"), model(make, "off")
    before = split_pack.CALLS[0]
    for _ in range(3):  # (call 1 the full loop, then split; weights written in place between)
        got = _train(monkeypatch, a, x, g)
        equal(got, _train(monkeypatch, b, x, g, on=False))  # (the prologue's pack, caller)
        equal(got, train(c, x, g))  # (no split: the packed GEMMs' rows alike in any block)
        for m in (a, b, c):
            for p in m.parameters():
                p.data[...] *= 1.01
    assert split_pack.CALLS[0] - before == 4  # (forward and reverse loops, calls 2 and 3)


def test_a_prologue_of_anything_else_keeps_the_callers_pack():
    def fn(a0, *, _dest, f_pack_panels, k4):
        return (f_pack_panels(a0, nr=k4, out=_dest[0]),)

    fn.__kwdefaults__ = {"_dest": [None], "f_pack_panels": split_pack._pack_forward, "k4": 8}
    one = "def program(a0, *, _dest, f_pack_panels, k4):\n    v1 = f_pack_panels(a0, nr=k4, out=_dest[0])\n    return (v1,)\n"
    made = split_pack.plan(one, fn)
    assert (made.inv, made.nr, made.dest) == (0, 8, [None])
    two = one.replace("    return (v1,)", "    v2 = np_negative(v1)\n    return (v2,)")
    assert split_pack.plan(two, fn) is None
    both = one.replace("return (v1,)", "return (v1, a0)")
    assert split_pack.plan(both, fn) is None
    fresh = split_pack.plan(one.replace("out=_dest[0]", "out=None"), fn)
    assert (fresh.inv, fresh.nr, fresh.dest) == (0, 8, None)  # (no lent slot: new panels)
    fn.__kwdefaults__["f_pack_panels"] = lambda w, out=None, nr=None: w
    assert split_pack.plan(one, fn) is None


@pytest.mark.parametrize("side", ["caller", "worker"])
def test_a_failed_pack_raises_on_either_thread(monkeypatch, rng, side):
    x, g = rng.standard_normal((T, 8, D)), rng.standard_normal((T, 8, 130))
    a = model(CELLS["fastlstm"][0], "on")
    _train(monkeypatch, a, x, g)
    real = split_pack.packed.pack_panels

    def failing(w, out=None, nr=None):
        if (threading.get_ident() in own_threads.worker_ident) == (side == "worker"):
            raise MemoryError(f"{side} pack")
        return real(w, out, nr)

    monkeypatch.setattr(split_pack.packed, "pack_panels", failing)
    before = split_pack.CALLS[0]
    with pytest.raises(MemoryError, match=f"{side} pack"):
        _train(monkeypatch, a, x, g)
    assert split_pack.CALLS[0] > before
