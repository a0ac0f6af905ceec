"""Issue 16's "Done when", against NumPy: rolled programs (the default), unroll=True programs and
hand-written NumPy equations agree to 1e-12 in float64, values and gradients (complex-step
derivatives of the NumPy equations: exact to rounding) -- every built-in cell, a custom cell,
fuzzed cells, length-masked batches remembered across chunks of rho steps (truncated BPTT),
BiSequencer, Repeater, stacked Sequencers, and a step-dependent cell (unrolled, reported)."""

import numpy as np
import pytest
import test_cells
from cell_fuzz import OPS, make_case, make_cell, numpy_outputs
from cell_reference import gru_step, lstm_step, rnn_step
from test_mufuru import mufuru_step
from test_rolled import Leaky, StepSwitch, leaky_step

import tapernn as tn
from tapernn import nn

D, H, B, T = 3, 4, 2, 6
TOL = {"rtol": 1e-12, "atol": 1e-12}
CELLS = dict(test_cells.CASES)  # LSTM (+ no peepholes), FastLSTM, GRU (+ reset after), RNNs
CELLS["mufuru"] = (lambda: nn.MuFuRu(D, H), None, 1)  # (its step: mufuru_step(cell.ops))
CELLS["custom"] = (lambda: Leaky(D, H), leaky_step, 1)


def cs_grads(f, arrays: dict, seed) -> dict:
    """d sum(seed * f(arrays)) / d(every entry of every array), by complex steps."""
    h, out = 1e-30, {}
    for name, value in arrays.items():
        g = np.zeros(value.shape)
        for idx in np.ndindex(value.shape):
            pert = value.astype(complex)
            pert[idx] += 1j * h
            g[idx] = np.sum(seed * f(dict(arrays, **{name: pert}))).imag / h
        out[name] = g
    return out


def steps(step, p, xs, state, mask=None):
    """NumPy: `step` over xs from `state`; with `mask` (T, B, 1) a row past its length outputs
    zeros and holds its state. Returns the stacked outputs and the final state."""
    outs = []
    for t, x in enumerate(xs):
        new = step(p, x, *state)
        m = 1.0 if mask is None else mask[t]
        state = tuple(m * n + (1 - m) * s for n, s in zip(new, state))
        outs.append(m * new[0])
    return np.stack(outs), state


def zeros(n):
    return tuple(np.zeros((B, H)) for _ in range(n))


def train(m, x, g, **kw):
    """Outputs, input gradient, parameter gradients (by name) of one training call."""
    m.zero_grad_parameters()
    y = m.forward(x, **kw)
    gx = m.backward(x, g)
    return np.array(y), np.array(gx), {k: p.grad.copy() for k, p in m.named_parameters().items()}


def twins(make, seed=0):
    """The same model twice: rolled (the default), and with every loop unroll=True."""
    tn.manual_seed(seed)
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    for m in b.modules():
        if hasattr(m, "unroll"):
            m.unroll = True
    return a, b


def loops(m, kind):
    return [n for n in m.compile_report().notes if f": {kind}" in n]


def check(got, want, grads, names):
    """`got` (y, gx, parameter grads) against NumPy values `want` and complex-step `grads`
    (keys: "input" and the parameters' NumPy names; `names` maps model names to those)."""
    y, gx, pg = got
    np.testing.assert_allclose(y, want, **TOL)
    np.testing.assert_allclose(gx, grads["input"], **TOL)
    assert set(names) == set(pg)
    for k, name in names.items():
        np.testing.assert_allclose(pg[k], grads[name], **TOL, err_msg=k)


def same(a, b):
    for u, v in zip(a[:2], b[:2]):
        np.testing.assert_allclose(u, v, **TOL)
    for k in a[2]:
        np.testing.assert_allclose(a[2][k], b[2][k], **TOL, err_msg=k)


def params(module, prefix=""):
    return {prefix + k: p.data.copy() for k, p in module.named_parameters().items()}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_every_cell(name):
    make, step, n = CELLS[name]
    a, b = twins(lambda: nn.Sequencer(make()))
    step = step or mufuru_step(a.module.ops)
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    rolled, unrolled = train(a, x, g), train(b, x, g)
    assert loops(a, "rolled") and not loops(b, "rolled")
    p = params(a.module)

    def f(arr):
        return steps(step, {k: arr[k] for k in p}, arr["input"], zeros(n))[0]

    same(rolled, unrolled)
    check(rolled, f(dict(p, input=x)), cs_grads(f, dict(p, input=x), g), {f"0.{k}": k for k in p})


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_lengths_remembered_across_chunks_of_rho_steps(name):
    """Truncated BPTT: an 11-step sequence in chunks of rho = 4 (the last one 3 steps: the same
    template), state remembered between them, each chunk right-padded (`lengths=`); a chunk's
    gradients stop at its first step (its initial state is a constant)."""
    make, step, n = CELLS[name]
    a, b = twins(lambda: nn.Sequencer(make()).remember("both"))
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((11, 3, D)), rng.standard_normal((11, 3, H))
    p, state = params(a.module), tuple(np.zeros((3, H)) for _ in range(n))
    for lo, lengths in ((0, [4, 3, 4]), (4, [4, 4, 2]), (8, [3, 1, 2])):
        hi = lo + max(lengths) if lo < 8 else 11
        xc, gc, lengths = x[lo:hi], g[lo:hi], np.array(lengths)
        mask = (np.arange(hi - lo)[:, None] < lengths)[..., None].astype(float)
        rolled, unrolled = train(a, xc, gc, lengths=lengths), train(b, xc, gc, lengths=lengths)
        same(rolled, unrolled)

        def f(arr, state=state, mask=mask):
            return steps(step, {k: arr[k] for k in p}, arr["input"], state, mask)[0]

        arrays = dict(p, input=xc)
        check(rolled, f(arrays), cs_grads(f, arrays, gc), {f"0.{k}": k for k in p})
        state = steps(step, p, xc, state, mask)[1]
        for got, want in zip(a.module.get_hidden_state(-1), state):
            np.testing.assert_allclose(got, want, **TOL)
    assert loops(a, "rolled") and not loops(b, "rolled")
    assert a.trace_count == 2  # from zeros, then from a remembered state: every length reuses


def test_bisequencer():
    a, b = twins(lambda: nn.BiSequencer(nn.LSTM(D, H), nn.GRU(D, H)))
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, 2 * H))
    rolled, unrolled = train(a, x, g), train(b, x, g)
    assert len(loops(a, "rolled")) == 3 and not loops(b, "rolled")  # fwd, bwd, merge
    pf, pb = params(a._children["fwd"], "f."), params(a._children["bwd"], "b.")

    def f(arr):
        fw = steps(lstm_step, {k[2:]: arr[k] for k in pf}, arr["input"], zeros(2))[0]
        bw = steps(gru_step, {k[2:]: arr[k] for k in pb}, arr["input"][::-1], zeros(1))[0]
        return np.concatenate([fw, bw[::-1]], axis=-1)

    arrays = dict(pf, **pb, input=x)
    names = {f"fwd.{k[2:]}": k for k in pf} | {f"bwd.{k[2:]}": k for k in pb}
    same(rolled, unrolled)
    check(rolled, f(arrays), cs_grads(f, arrays, g), names)


def test_repeater():
    a, b = twins(lambda: nn.Repeater(nn.RNN(D, H), 5))
    rng = np.random.default_rng(4)
    x, g = rng.standard_normal((B, D)), list(rng.standard_normal((5, B, H)))
    rolled, unrolled = train(a, x, g), train(b, x, g)
    assert loops(a, "rolled") and not loops(b, "rolled")
    p = params(a._children["0"])

    def f(arr):
        return steps(rnn_step, {k: arr[k] for k in p}, [arr["input"]] * 5, zeros(1))[0]

    same(rolled, unrolled)
    check(
        rolled,
        f(dict(p, input=x)),
        cs_grads(f, dict(p, input=x), np.array(g)),
        {f"0.{k}": k for k in p},
    )


def test_stacked_sequencers_with_initial_state_gradients():
    def model():
        return nn.Sequential(
            nn.Sequencer(nn.LSTM(D, H)),
            nn.Sequencer(nn.Sequential(nn.GRU(H, H), nn.Linear(H, 2))),
        )

    a, b = twins(model)
    rng = np.random.default_rng(5)
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    lstm = [next(s for s in m.modules() if isinstance(s, nn.LSTM)) for m in (a, b)]
    for cell in lstm:
        cell.set_initial_state((h0, c0))
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, 2))
    rolled, unrolled = train(a, x, g), train(b, x, g)
    assert len(loops(a, "rolled")) == 2 and not loops(b, "rolled")
    gru, lin = [next(s for s in a.modules() if isinstance(s, c)) for c in (nn.GRU, nn.Linear)]
    pl, pg, pw = params(lstm[0], "l."), params(gru, "g."), params(lin, "w.")

    def f(arr):
        hs = steps(lstm_step, {k[2:]: arr[k] for k in pl}, arr["input"], (arr["h0"], arr["c0"]))
        zs = steps(gru_step, {k[2:]: arr[k] for k in pg}, hs[0], zeros(1))[0]
        return zs @ arr["w.weight"].T + arr["w.bias"]

    arrays = dict(pl, **pg, **pw, input=x, h0=h0, c0=c0)
    exact = cs_grads(f, arrays, g)
    names = {f"0.0.{k[2:]}": k for k in pl} | {f"1.0.0.{k[2:]}": k for k in pg}
    names |= {f"1.0.1.{k[2:]}": k for k in pw}
    same(rolled, unrolled)
    check(rolled, f(arrays), exact, names)
    for cell in lstm:
        for got, want in zip(cell.get_grad_initial_state(), (exact["h0"], exact["c0"])):
            np.testing.assert_allclose(got, want, **TOL)


def _complex_logsig(a):
    return -np.log1p(np.exp(-a))  # = -logaddexp(0, -a), which has no complex loop


@pytest.mark.parametrize("seed", range(10))
def test_fuzzed_cells(seed, monkeypatch):
    """Values at 1e-12 of scale, and the gradient along a random direction (input and every
    parameter) against one complex step of the NumPy program (float64 cases)."""
    monkeypatch.setitem(OPS, "logsig", (*OPS["logsig"][:1], _complex_logsig, OPS["logsig"][2]))
    case = make_case(seed)
    models = []
    for unroll in (None, True):
        cells = [make_cell(c, p, f"F{k}") for k, (c, p) in enumerate(zip(case.cells, case.params))]
        inner = cells[0] if len(cells) == 1 else nn.Sequential(*cells)
        models.append((nn.Sequencer(inner, unroll=unroll).astype(case.dtype), cells))
    x, g = case.x.astype(case.dtype), case.seed_grad.astype(case.dtype)
    (rolled, cells), (unrolled, _) = models
    got, other = train(rolled, x, g), train(unrolled, x, g)
    assert loops(rolled, "rolled") or case.T == 1
    if case.dtype != np.float64:
        return  # (float32 cases: tests/test_rolled.py compares them at 1e-5)
    same(got, other)
    want = numpy_outputs(case)
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got[0], want, rtol=1e-12, atol=1e-12 * scale)
    rng = np.random.default_rng(seed + 100)
    vx = rng.standard_normal(case.x.shape)
    vp = [{k: rng.standard_normal(v.shape) for k, v in p.items()} for p in case.params]
    e = 1e-30j
    ps = [{k: p[k] + e * v[k] for k in p} for p, v in zip(case.params, vp)]
    exact = np.sum(case.seed_grad * numpy_outputs(case, ps, case.x + e * vx)).imag / 1e-30
    grads = [{k: getattr(c, k).grad for k in p} for c, p in zip(cells, case.params)]
    analytic = np.sum(got[1] * vx) + sum(
        np.sum(gr[k] * v[k]) for gr, v in zip(grads, vp) for k in v
    )
    np.testing.assert_allclose(analytic, exact, rtol=1e-12, atol=1e-12)


def test_step_dependent_cell_falls_back_to_unrolled_with_gradients():
    """Python control flow on the step number: the period is never found, the loop runs
    unrolled (the report says why), and values and gradients are the NumPy equations'."""
    tn.manual_seed(6)
    cell = StepSwitch(D, H, at=3)
    seq = nn.Sequencer(cell)
    rng = np.random.default_rng(7)
    x, g = rng.standard_normal((T, B, D)) * 0.5, rng.standard_normal((T, B, H))
    got = train(seq, x, g)
    notes = seq.compile_report().notes
    assert not loops(seq, "rolled") and any("unrolled" in n and "step number" in n for n in notes)

    def f(arr):
        h, outs = np.zeros((B, H)), []
        for t in range(T):
            h = np.tanh(arr["input"][t] @ arr["w"].T + h) * (2.0 if t >= 3 else 1.0)
            outs.append(h)
        return np.stack(outs)

    arrays = {"w": cell.w.data.copy(), "input": x}
    check(got, f(arrays), cs_grads(f, arrays, g), {"0.w": "w"})
