"""The rolled step loop's fixed cost per call (issue 16 at tiny sizes): what the module layer and
the generated loop no longer do per call or per step, each checked structurally and against the
unrolled program or the generic path it replaces."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import tapernn as tn
from tapernn import PlanOptions, nn
from tapernn.nn import roll_api
from tapernn.nn.recurrent import AbstractRecurrent
from tapernn.nn.runtime import _write_plan


def _lstm():
    return nn.Sequencer(nn.LSTM(3, 4))


def _bi():
    return nn.BiSequencer(nn.GRU(3, 4), nn.LSTM(3, 4))


def _recurrent():  # step 0 peeled (its own graph), then one scan: single fields + stacked rows
    return nn.Sequencer(nn.Recurrent(4, nn.Linear(3, 4), nn.Linear(4, 4), nn.Tanh()))


def _bi_recurrent():  # the same in a reverse loop
    return nn.BiSequencer(
        nn.Recurrent(4, nn.Linear(3, 4), nn.Linear(4, 4), nn.Tanh()),
        nn.Recurrent(4, nn.Linear(3, 4), nn.Linear(4, 4), nn.Sigmoid()),
    )


def _shared():  # one LSTM called twice per step: its stacked steps interleave (stride 2)
    lstm = nn.LSTM(4, 4)
    return nn.Sequencer(nn.Sequential().add(nn.Linear(3, 4)).add(lstm).add(lstm))


MODELS = {
    "lstm": _lstm,
    "bi": _bi,
    "recurrent": _recurrent,
    "bi-recurrent": _bi_recurrent,
    "shared": _shared,
}


def _recurrents(model):
    return [m for m in model.modules() if isinstance(m, AbstractRecurrent)]


def _fields(m):
    return (
        [o.copy() for o in m.outputs],
        [i.copy() for i in m.inputs],
        {k: [s.copy() for s in v] for k, v in m.states.items()},
        int(m.step),
    )


def _assert_same(a, b):
    assert a[3] == b[3]
    assert a[2].keys() == b[2].keys()
    for x, y in zip(a[:2] + tuple(a[2].values()), b[:2] + tuple(b[2].values())):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_rolled_fields_are_written_grouped_once_per_program(name, monkeypatch):
    """A rolled loop's per-step fields (outputs, inputs, states: its stacked rows, after any
    peeled steps' own arrays) are written from a plan made once per program, not by splitting
    each stacked probe per call (roll_api.stacked_fields, the generic path, which stays for
    steps that interleave); the fields equal the generic path's and the unrolled program's."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 2, 3))
    base = MODELS[name]()
    results = {}
    for how in ("grouped", "generic", "unrolled"):
        model = copy.deepcopy(base)
        if how == "unrolled":
            model.unroll = True
        grouped = how != "generic"
        monkeypatch.setattr(AbstractRecurrent._write_fields, "by_steps", grouped)
        calls: list = []
        monkeypatch.setattr(
            "tapernn.nn.runtime.stacked_fields",
            lambda *a, calls=calls: calls.append(1) or roll_api.stacked_fields(*a),
        )
        for _ in range(2):  # the second call reuses the program and its plan
            model.forward(x)
        exe = model._runtime.last
        assert exe.rolled == (how != "unrolled")
        if how == "grouped":
            plans = {id(m): by_steps for m, _, _, _, by_steps in _write_plan(exe)}
            cells = _recurrents(model)
            if name == "shared":  # interleaved: the generic path
                assert calls
            else:
                assert all(plans[id(m)] is not None for m in cells)
                assert not calls
        results[how] = [_fields(m) for m in _recurrents(model)]
    for a, b, c in zip(results["grouped"], results["generic"], results["unrolled"]):
        _assert_same(a, b)
        for u, v in zip(a[0], c[0]):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


def _runners(program):
    return [v for k, v in program.fn.__kwdefaults__.items() if k.startswith("scan_run")]


@pytest.fixture
def numpy_backend():
    """The Python loop runner is what these tests read (on numba a loop kernel replaces it)."""
    before = tn.get_backend()
    tn.set_backend("numpy")
    yield
    tn.set_backend(before)


@pytest.mark.parametrize("cell", ["LSTM", "FastLSTM", "GRU"])
def test_the_loop_takes_its_step_rows_by_iteration_and_keeps_views_of_its_buffer(
    cell, numpy_backend
):
    """The generated loop gets each step's xs slices and ys rows from iterating the arrays in
    its header (no Python index per array per step), copies rows by slice assignment, binds
    the inline sigmoid's scalars as 0-d arrays, and a loop writing into a buffer of its program
    makes that slab's views once. Training steps with new inputs, two lengths and repeated
    calls still equal the unrolled program's (float64)."""
    rng = np.random.default_rng(7)
    rolled = nn.Sequencer(getattr(nn, cell)(3, 4))
    # (the backward loop writing into a buffer of its program: without dz_in_gates, which
    # computes it into the saved forward slab instead, test_dz_in_gates.py)
    rolled.set_plan_options(PlanOptions(dz_in_gates=False))
    unrolled = copy.deepcopy(rolled)
    unrolled.unroll = True
    for T in (5, 3, 5):
        x, g = rng.standard_normal((T, 2, 3)), rng.standard_normal((T, 2, 4))
        for m in (rolled, unrolled):
            m.zero_grad_parameters()
            m.forward(x)
            m.backward(x, g)
        np.testing.assert_allclose(rolled.output, unrolled.output, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rolled.grad_input, unrolled.grad_input, rtol=1e-11, atol=1e-12)
        for (k, p), q in zip(rolled.named_parameters().items(), unrolled.parameters()):
            np.testing.assert_allclose(p.grad, q.grad, rtol=1e-11, atol=1e-12, err_msg=k)
    pair = rolled._runtime.last.compile_training()
    fwd, bwd = _runners(pair.forward.program), _runners(pair.last_backward.program)
    assert fwd and bwd
    for run in fwd + bwd:
        assert "[_t]" not in run.source, run.source
        # a ys computed elsewhere is copied into its row by a slice assignment (np.copyto's
        # Python-level dispatch costs ~1 us more per call, several calls per step)
        assert "np_copyto(" not in run.source.replace("_np_copyto(out, _slab)", ""), run.source
        # the inline sigmoid's scalar operand is a bound 0-d array of the dtype: a ufunc
        # converts a Python float operand on every call (~2 us of a 4 us call)
        assert "logaddexp(0.0" not in run.source and "0.0," not in run.source, run.source
        assert "np_logaddexp(z" in run.source or run not in fwd
        (header,) = [line for line in run.source.splitlines() if "for _t" in line]
        assert "zip(" in header and "_X0" in header and "_Y0" in header, header
    (back,) = bwd
    assert "_ys_views(_slab, _slab is out)" in back.source  # its out= is a program buffer
    views = back.bound["_ys_views"]
    slab = np.empty(10_000)
    assert views(slab, True) is views(slab, True)  # made once for that buffer
    assert views(slab) is not views(slab)  # a fresh slab (a forward's): made per call
