"""A loop split over two threads (scan_split.SplitRunner, issue 19, hsplitlend): its halves run
the full body's prologue once and share its packed panels, which go into the packed weight's
zeroed `.grad` as an unsplit loop's do (pack_scratch.py), zeroed again once both halves end;
the halves' step buffers are carved from the full body's (scan_split.BufferPool), apart from
each other. Structure, zeros after the loop, equivalence (float64, 1e-12: the unsplit run with
the lending off, the NumPy backend, the NumPy equations), the report against tracemalloc."""

import re

import numpy as np
import pytest
from lend_check import data, fresh_loop_peak, seeded, spy_lend

import tapernn.codegen
from tapernn import PlanOptions, nn, own_threads, scan_split
from tapernn.backends import numba_available
from tapernn.nn import packing
from tapernn.nn.runtime import runtime_of
from tapernn.scan_split import BufferPool, SplitRunner
from tests import cell_reference as ref

# (B * 4H > the numba loop kernel's 4096 elements: the Python loop, packed GEMMs, split)
T, B, H = 4, 16, 128
SPLIT = {"own_threads": "off", "batch_split": "on"}
ONE_THREAD = {"own_threads": "off", "batch_split": "off"}

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
]


def _model(seed=0):
    return seeded(lambda: nn.FastLSTM(H, H), seed)


def _data(seed):
    return data((T, B, H), seed)


@pytest.fixture
def lent(monkeypatch):
    return spy_lend(monkeypatch)


def _runners(program):
    return [v for v in program.fn.__kwdefaults__.values() if isinstance(v, SplitRunner)]


def _run(backend="numba", options=SPLIT, rounds=3):
    m = _model()
    seq = nn.Sequencer(m).set_plan_options(PlanOptions(backend=backend, layout="batch", **options))
    got = []
    for k in range(rounds):
        x, g = _data(k)
        seq.zero_grad_parameters()
        out = np.array(seq.forward(x))
        gi = np.array(seq.backward(x, g))
        got.append(
            [out, gi]
            + [p.grad.copy() for p in m.parameters()]
            + [np.array(s) for s in m.get_grad_hidden_state(1)]
        )
        seq.update_parameters(0.1)
    return seq, m, got


def _close(a, b):
    for u, v in zip(a, b):
        for p, q in zip(u, v):
            np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-12)


def test_a_split_loop_lends_its_panels_and_equals_the_unsplit_numpy_and_equations(
    lent, monkeypatch
):
    seq, m, on = _run()
    pair = runtime_of(seq).last.training_pair
    for prog in (pair.forward.program, pair.last_backward.program):
        (runner,) = _runners(prog)
        assert runner.split_calls >= 2 and not runner.failed  # (the general path, then steady)
        ((dest, s, node, rows, _),) = prog.loop_scratch.values()
        assert node.op == "pack_panels" and rows is None and dest[s] is None
    assert len(lent) == 6
    assert all([u is m.o2g.weight.grad for u in used] == [True] for used in lent)
    with monkeypatch.context() as mp:
        mp.setattr(tapernn.codegen, "loop_slots", lambda *a: {})
        seq_off, _, off = _run(options=ONE_THREAD)
        assert not _runners(runtime_of(seq_off).last.training_pair.forward.program)
    _close(on, off)
    _close(on, _run("numpy")[2])
    params = {name: p.data.copy() for name, p in _model().named_parameters().items()}
    want, _ = ref.run(ref.fastlstm_step, params, _data(0)[0], 2, H)
    np.testing.assert_allclose(on[0][0], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("overwritten", [True, False])
@pytest.mark.parametrize("owned", [False, True])
def test_the_split_loop_zeroes_the_lent_grad_when_both_halves_end(
    owned, overwritten, lent, monkeypatch
):
    # (owned: the zero-fill on both threads, own_threads.in_two, from any size here;
    # overwritten: the backward computes that .grad whole after the loop, which leaves the
    # panels there -- pack_scratch.Lent.left; else _within is made to say no)
    monkeypatch.setattr(own_threads, "TWO_MIN_BYTES", 0)
    if not overwritten:
        monkeypatch.setattr(packing, "_within", lambda a, known: False)
    fills = []  # (per zero_fill of the lent panels: whether it ran on both threads)

    def fill(arrays, real=scan_split.zero_fill):
        two = own_threads.TWO_CALLS[0]
        real(arrays)
        fills.append(own_threads.TWO_CALLS[0] > two)

    monkeypatch.setattr(scan_split, "zero_fill", fill)
    options = {**SPLIT, "own_threads": "on"} if owned else SPLIT
    m = _model()
    seq = nn.Sequencer(m).set_plan_options(PlanOptions(backend="numba", layout="batch", **options))
    x, g = _data(0)
    for _ in range(2):  # (the first calls run the full loop until the kernels are in place)
        seq.zero_grad_parameters()
        seq.forward(x)
        seq.backward(x, g)
    for _ in range(2):
        seq.zero_grad_parameters()
        seq.forward(x)
        assert lent[-1] and not m.o2g.weight.grad.any()
        bwd = runtime_of(seq).last.training_pair.backward_program(0)
        ((dest, s, *_),) = bwd.program.loop_scratch.values()
        (runner,) = _runners(bwd.program)
        seen = []
        real = runner._halves

        def watch(*args, real=real, dest=dest, s=s, seen=seen):
            out = real(*args)
            seen.append(dest[s] is not None and m.o2g.weight.grad.any())
            return out

        kw = bwd.program.fn.__kwdefaults__
        (name,) = [k for k, v in kw.items() if v is runner]

        def ended(*args, runner=runner, dest=dest, s=s, seen=seen, **kwargs):
            out = runner(*args, **kwargs)
            seen.append((dest[s] is not None, s in dest.left, m.o2g.weight.grad.any()))
            return out

        monkeypatch.setattr(runner, "_halves", watch)
        monkeypatch.setitem(kw, name, ended)
        calls = runner.split_calls
        seq.backward(x, g)
        monkeypatch.setattr(runner, "_halves", real)
        monkeypatch.setitem(kw, name, runner)
        assert runner.split_calls == calls + 1
        # the panels were in the .grad during the halves, zeros again when the loop returned
        # unless the backward overwrites them next
        assert seen == [True, (True, overwritten, overwritten)]
        assert lent[-1] == [m.o2g.weight.grad] and m.o2g.weight.grad.any()  # (the gradient)
        assert dest[s] is None and not dest.left
    assert fills and set(fills) == {owned}


def test_the_halves_step_buffers_are_carved_from_the_full_bodys_apart():
    seq, _, _ = _run(rounds=3)
    pair = runtime_of(seq).last.training_pair
    for prog in (pair.forward.program, pair.last_backward.program):
        (runner,) = _runners(prog)
        assert runner.split_calls > 0
        full = runner.helpers["full_buffers"]
        halves = []
        for loop, _ in runner.loops:
            kw = loop.__kwdefaults__["_fn"].__kwdefaults__
            halves.append([a for k, a in kw.items() if re.fullmatch(r"b\d+", k)])
        assert all(halves)
        for views in halves:
            for a in views:
                assert any(np.shares_memory(a, f) for f in full)
        for a in halves[0]:
            for b in halves[1]:
                assert not np.shares_memory(a, b)


def test_buffer_pool_slices_apart_and_misses_when_too_small():
    f = [np.empty(100, np.float64), np.empty(10, np.float32)]
    pool = BufferPool(f)
    a = pool.take([(50, np.float64), (5, np.float32)])
    b = pool.take([(40, np.float64), (5, np.float32)])
    assert not pool.missed
    for u, v in zip(a, b):
        assert np.shares_memory(u, f[0]) or np.shares_memory(u, f[1])
        assert not np.shares_memory(u, v)
    assert [x.size for x in a + b] == [50, 5, 40, 5] and a[0].ctypes.data % 8 == 0
    assert pool.take([(11, np.float64)]) is None and pool.missed
    once = BufferPool(f).once()
    assert once([(1, np.float64)]) is not None and once([(1, np.float64)]) is None


def test_a_split_that_does_not_fit_runs_the_full_loop_and_says_so(monkeypatch):
    monkeypatch.setattr(BufferPool, "take", lambda self, buffers: setattr(self, "missed", True))
    seq, _, on = _run(rounds=2)
    (runner,) = _runners(runtime_of(seq).last.training_pair.forward.program)
    assert runner.split_calls == 0 and "do not fit" in runner.failed
    assert "do not fit" in runner.report.kernel
    monkeypatch.undo()
    _close(on, _run(options=ONE_THREAD, rounds=2)[2])


def test_the_split_loops_report_is_within_10_percent_of_its_tracemalloc_peak():
    # (in a fresh interpreter: lend_check.fresh_loop_peak)
    real, report, calls = fresh_loop_peak(f"Sequencer(nn.FastLSTM({H}, {H}))", 8, B, H, SPLIT)
    assert abs(real - report) <= 0.1 * report, (real, report)
    assert len(calls["forward"]) == 1 and calls["forward"][0] > 0, calls
