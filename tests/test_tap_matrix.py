"""get_grad_hidden_state after a plain Sequencer backward, for every step it can be asked, with
the input, the output gradient or the parameters changed in place (or by update_parameters, or
rows permuted in place) after the backward: the value is the backward's -- complex-step NumPy
equations (tests/cell_reference.py, float64, 1e-12), never computed by tapernn -- or, where the
changed array was held by reference (nn/tap_digest.py fingerprints, both kinds), StateError;
written back with the same bytes, the backward's value again. FastLSTM, LSTM, GRU; plain,
stacked (two cells), lengths= and remember("both") (the second chunk); numpy and numba
backends; the general path (call 1) and the steady one (call 3). (issue 19, branch htap)"""

import numpy as np
import pytest

from tapernn import PlanOptions, nn
from tapernn.errors import StateError
from tapernn.nn import state_grads, tap_digest
from tests import cell_reference as ref

H, T, B = 3, 4, 3
CELLS = {
    "FastLSTM": (lambda: nn.FastLSTM(H, H), ref.fastlstm_step, 2),
    "LSTM": (lambda: nn.LSTM(H, H), ref.lstm_step, 2),
    "GRU": (lambda: nn.GRU(H, H), ref.gru_step, 1),
}
LENGTHS = np.array([T, 2, 3])


def _run(steps, params, xs, states, lengths, first):
    """The stacked cells from step `first` on, from per-layer `states`: (outputs, states per
    step); past a row's length its output is zero and its states are held."""
    states = [tuple(s) for s in states]
    outs, per_step = [], []
    for s in range(first, len(xs)):
        inp = xs[s]
        live = None if lengths is None else (s < lengths)[:, None]
        for k, (step, p) in enumerate(zip(steps, params)):
            new = step(p, inp, *states[k])
            if live is not None:
                new = tuple(np.where(live, n, o) for n, o in zip(new, states[k]))
                inp = np.where(live, new[0], 0)
            else:
                inp = new[0]
            states[k] = new
        outs.append(inp)
        per_step.append(list(states))
    return outs, per_step


def _oracle(steps, params, xs, gs, states0, lengths):
    """[layer][t] -> the gradient step t + 1 sends into layer's states of step t, by complex step
    (d sum over s > t of gs[s] * output[s])."""
    _, per_step = _run(steps, params, xs, states0, lengths, 0)
    out = []
    for k in range(len(steps)):
        layer = []
        for t in range(len(xs)):
            grads = []
            for j in range(len(per_step[t][k])):
                grad = np.zeros((B, H))
                for idx in np.ndindex(grad.shape):
                    start = [tuple(s.astype(complex) for s in st) for st in per_step[t]]
                    pert = list(start[k])
                    pert[j] = pert[j].copy()
                    pert[j][idx] += 1e-30j
                    start[k] = tuple(pert)
                    outs, _ = _run(steps, params, xs, start, lengths, t + 1)
                    total = sum((np.sum(g * o) for g, o in zip(gs[t + 1 :], outs)), 0j)
                    grad[idx] = np.imag(total) / 1e-30
                grads.append(grad)
            layer.append(grads)
        out.append(layer)
    return out


def _cells(seq, layout):
    return list(seq.module) if layout == "stacked" else [seq.module]


def _model(cell, layout, backend):
    make = CELLS[cell][0]
    inner = nn.Sequential(make(), make()) if layout == "stacked" else make()
    seq = nn.Sequencer(inner)
    if layout == "remember":
        seq.remember("both")
    seq.set_plan_options(PlanOptions(tap_room_min_bytes=0, backend=backend))
    for k, p in enumerate(seq.parameters()):
        p.data[...] = np.random.default_rng(10 + k).standard_normal(p.shape) * 0.4
    return seq


def _params(seq, layout):
    return [
        {name: p.data.copy() for name, p in m.named_parameters().items()}
        for m in _cells(seq, layout)
    ]


def _held(cell_module):
    """Positions (in arguments + seeds) and arrays the pending state gradients hold by
    reference (none once they are computed)."""
    pending = cell_module.__dict__["_grad_hidden"]
    return {k: a for k, a, _ in pending.args[7]} if callable(pending) else {}


def _change(how, seq, x, g):
    """Change something after the backward; returns (the changed array or None, undo)."""
    if how == "input":
        old = x.copy()
        x[0, 0, 0] += 1.0
        return x, lambda: x.__setitem__(Ellipsis, old)
    if how == "rows":
        old = x.copy()
        x[:] = x[::-1]  # (the steps in reverse order: the same bytes elsewhere)
        return x, lambda: x.__setitem__(Ellipsis, old)
    if how == "grad":
        old = g.copy()
        g[-1, -1, -1] *= -2.0
        return g, lambda: g.__setitem__(Ellipsis, old)
    if how == "params":
        ps = [p.data for p in seq.parameters()]
        olds = [p.copy() for p in ps]
        for p in ps:
            p *= 1.5

        def undo():
            for p, o in zip(ps, olds):
                p[...] = o

        return ps, undo
    assert how == "update"
    seq.update_parameters(0.3)
    return None, lambda: None


def _check(seq, layout, want, changed):
    """Every step's state gradients of every cell: the oracle's, or StateError when `changed`
    is an array the pending computation holds by reference (and only then)."""
    held = [a for m in _cells(seq, layout) for a in _held(m).values()]
    arrays = changed if isinstance(changed, list) else [changed]
    if any(a is h for a in arrays if a is not None for h in held):
        with pytest.raises(StateError, match="changed in place after the backward"):
            _cells(seq, layout)[0].get_grad_hidden_state(0)
        return False
    for m, layer in zip(_cells(seq, layout), want):
        for t, grads in enumerate(layer):
            got = m.get_grad_hidden_state(t)
            assert len(got) == len(grads)
            for u, w in zip(got, grads):
                np.testing.assert_allclose(u, w, rtol=1e-12, atol=1e-12)
    return True


def _kind(kind, monkeypatch):
    """The fingerprint kind: the numba digest (loaded first) or zlib's."""
    monkeypatch.setattr(state_grads, "WATCH_MIN_BYTES", 0)  # (these shapes are small)
    if kind == "n":
        tap_digest.KERNEL.prepare(())
        assert tap_digest.KERNEL.fn is not None
    else:
        monkeypatch.setattr(tap_digest, "kernel", lambda: None)


HOWS = ["input", "rows", "grad", "params", "update"]


def _calls(seq, layout, cell, rng, states):
    """One call of each length (T - 1: the general path, then T: the general path, then T
    again: the steady one), each checked but the middle one: yields (x, g, the oracle) after
    each backward to check."""
    steps = [CELLS[cell][1]] * len(_cells(seq, layout))
    for t, checked in ((T - 1, True), (T, False), (T, True)):
        x, g = rng.standard_normal((t, B, H)), rng.standard_normal((t, B, H))
        lengths = np.minimum(LENGTHS, t) if layout == "lengths" else None
        if layout == "remember" and seq.module is not None and _cells(seq, layout)[0]._state:
            states = [tuple(np.array(s) for s in m._state) for m in _cells(seq, layout)]
        want = _oracle(steps, _params(seq, layout), x, g, states, lengths)
        seq.forward(x, lengths=lengths) if lengths is not None else seq.forward(x)
        seq.backward(x, g)
        if checked:
            yield x, g, want


def _run_matrix(cell, backend, layout, hows):
    seq = _model(cell, layout, backend)
    rng = np.random.default_rng(0)
    zeros = [tuple(np.zeros((B, H)) for _ in range(CELLS[cell][2])) for _ in _cells(seq, layout)]
    out = {}
    for how in hows:
        raised = []
        for x, g, want in _calls(seq, layout, cell, rng, zeros):
            changed, undo = _change(how, seq, x, g)
            raised.append(not _check(seq, layout, want, changed))
            undo()
            if how != "update":  # (the same bytes again: the backward's values)
                _check(seq, layout, want, None)
        if how in ("params", "update"):
            assert not any(raised)  # parameters are always copied
        out[how] = raised
    return out


@pytest.fixture
def refs(monkeypatch):
    """A tap room that takes the parameters only: the input and the output gradient are held
    by reference wherever there is a room (state_grads.tap_places)."""
    places = state_grads.tap_places

    def params_only(sizes, room, watch=frozenset()):
        return {k: at for k, at in places(sizes, room, watch).items() if k not in watch}

    monkeypatch.setattr(state_grads, "tap_places", params_only)


MATRIX = [  # (numba's stacked and lengths= programs for FastLSTM only: ~10-18 s each, CI time)
    (cell, backend, layout)
    for cell in CELLS
    for backend in ("numpy", "numba")
    for layout in ("plain", "stacked", "lengths", "remember")
    if backend == "numpy" or cell == "FastLSTM" or layout in ("plain", "remember")
]


@pytest.mark.parametrize(("cell", "backend", "layout"), MATRIX)
def test_state_gradients_after_a_change_are_the_backwards_or_state_error(
    monkeypatch, cell, backend, layout
):
    _kind("n", monkeypatch)
    raised = _run_matrix(cell, backend, layout, HOWS)
    if layout in ("plain", "remember"):  # (a room: what does not fit it is held)
        assert any(any(r) for r in raised.values())


HELD = [  # (the kinds on the NumPy backend: which kind checks is the backend's choice neither)
    (cell, backend, layout, kind)
    for cell in CELLS
    for layout in ("plain", "remember")
    for backend, kind in (("numpy", "n"), ("numpy", "z"), ("numba", "n"))
    if backend == "numpy" or cell == "FastLSTM"
]


@pytest.mark.parametrize(("cell", "backend", "layout", "kind"), HELD)
def test_held_input_and_output_gradient_changed_raise(
    monkeypatch, refs, kind, cell, backend, layout
):
    _kind(kind, monkeypatch)
    raised = _run_matrix(cell, backend, layout, HOWS)
    assert all(raised["input"]) and all(raised["rows"]) and all(raised["grad"]), raised
