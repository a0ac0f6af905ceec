"""The batch split of rolled loops (scan_split.py, issue 19): on the numba backend a Python-run
loop whose body is row-wise runs its two row halves at once on two threads. Split = unsplit
= the NumPy equations, values and every gradient, for FastLSTM (packed step GEMM: bit for bit,
on any CPU: the module forces the packed path on AVX2 too, conftest.packed_on), peephole LSTM and
GRU (OpenBLAS step GEMMs: bit for bit where the BLAS gives a GEMM's row halves the whole GEMM's
bits, tapernn.blas_bits, else to 1e-12), odd batches, `lengths=` batches remembered across
chunks, need_grad_input=False; B = 1 and bodies that are not row-wise do not split; the "auto"
rule splits only with >= 2 BLAS threads."""

import numpy as np
import pytest
from cell_reference import fastlstm_step, gru_step, lstm_step

import tapernn as tn
from tapernn import nn, scan_split
from tapernn.backends import numba_available
from tapernn.blas_bits import blas_bits

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
    pytest.mark.usefixtures("numba_now"),  # (conftest: kernels compiled at first calls)
]
TOL = {"rtol": 1e-12, "atol": 1e-12}
D, T = 3, 5
# H = 130: FastLSTM's W (130, 520) is packed (>= 65,536 elements); the LSTM's per-gate (130, 130)
# weights and the GRU's are not (OpenBLAS in the step)
CELLS = {
    "fastlstm": (lambda: nn.FastLSTM(D, 130), fastlstm_step, 2, 130),
    "lstm": (lambda: nn.LSTM(D, 130), lstm_step, 2, 130),
    "gru": (lambda: nn.GRU(D, 130), gru_step, 1, 130),
}


def model(make, mode, **kw):
    tn.manual_seed(0)
    m = nn.Sequencer(make(), **kw)
    m.set_plan_options(tn.PlanOptions(layout="batch", batch_split=mode))
    return m


def train(m, x, g, need_grad_input=True, **kw):
    m.zero_grad_parameters()
    y = np.array(m.forward(x, **kw))
    gx = m.backward(x, g, need_grad_input=need_grad_input)
    grads = {k: p.grad.copy() for k, p in m.named_parameters().items()}
    return y, None if gx is None else np.array(gx), grads


def equal(a, b, exact=True):
    """Bit for bit with packed step GEMMs (the split changes no sum's order); else (OpenBLAS's
    per-row sums may depend on the row count: "auto" does not split those) to 1e-12."""
    # (the callers pass exact=split_exact(name): OpenBLAS's halves too where blas_bits says so)
    check = (
        np.testing.assert_array_equal
        if exact
        else lambda u, v, **kw: np.testing.assert_allclose(u, v, **TOL, **kw)
    )
    for u, v in zip(a[:2], b[:2]):
        if u is None:
            assert v is None
            continue
        check(u, v)
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        check(a[2][k], b[2][k], err_msg=k)


def notes(m):
    return [loop.kernel for loop in m.compile_report().loops]


def steps(step, p, xs, state, mask=None):
    outs = []
    for t, x in enumerate(xs):
        new = step(p, x, *state)
        k = 1.0 if mask is None else mask[t]
        state = tuple(k * n + (1 - k) * s for n, s in zip(new, state))
        outs.append(k * new[0])
    return np.stack(outs), state


def split_exact(name):
    """Whether the split must give the unsplit bits: FastLSTM's step GEMMs run packed (rows
    summed alike in any row block); the others' run on OpenBLAS, whose row halves keep the whole
    GEMM's bits on some CPUs only (the AVX2 VM's float64 not: its 1-row edge block)."""
    return name == "fastlstm" or blas_bits(np.float64).rows


def directional(f, arrays, directions, seed):
    """d/de sum(seed * f(arrays + e * directions)) at 0 by a complex step (exact to rounding)."""
    h = 1e-30
    moved = {k: arrays[k] + 1j * h * directions[k] for k in arrays}
    return np.sum(seed * f(moved)).imag / h


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("batch", [5, 8])
def test_split_equals_unsplit_and_numpy_equations(name, batch, rng):
    make, step, n, H = CELLS[name]
    x, g = rng.standard_normal((T, batch, D)), rng.standard_normal((T, batch, H))
    a, b = model(make, "on"), model(make, "off")
    for _ in range(2):  # call 1 runs the full loop (the kernels take over), then splits
        got, want = train(a, x, g), train(b, x, g)
        equal(got, want, split_exact(name))
        for m in (a, b):  # the next call sees other weights
            for p in m.parameters():
                p.data[...] += 0.01
    for m in (a, b):
        for p in m.parameters():
            p.data[...] -= 0.01
    before = scan_split.SPLIT_CALLS[0]
    got = train(a, x, g)
    assert scan_split.SPLIT_CALLS[0] - before == 2  # the forward and the backward loop split
    equal(got, train(b, x, g), split_exact(name))
    assert all("batch split over 2 threads (rows 0:" in k for k in notes(a)), notes(a)
    assert all("batch split" not in k for k in notes(b)), notes(b)
    check_equations(a, step, n, x, g, got, rng)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_lengths_remembered_across_chunks(name, rng):
    """11 steps in chunks of 4, 4, 3 (one template), state remembered, rows right-padded; the
    sequence twice."""
    make, step, n, H = CELLS[name]
    a, b = model(make, "on"), model(make, "off")
    for m in (a, b):
        m.remember("both")
    rows = 5
    x, g = rng.standard_normal((11, rows, D)), rng.standard_normal((11, rows, H))
    p = {k: v.data.copy() for k, v in a.module.named_parameters().items()}
    state = tuple(np.zeros((rows, H)) for _ in range(n))
    before = scan_split.SPLIT_CALLS[0]
    chunks = ((0, [4, 3, 4, 1, 2]), (4, [4, 4, 2, 4, 3]), (8, [3, 1, 2, 3, 3]))
    for lo, lengths in chunks * 2:  # (twice over: each program's later calls split)
        hi = lo + max(lengths) if lo < 8 else 11
        xc, gc, lengths = x[lo:hi], g[lo:hi], np.array(lengths)
        mask = (np.arange(hi - lo)[:, None] < lengths)[..., None].astype(float)
        got, want = train(a, xc, gc, lengths=lengths), train(b, xc, gc, lengths=lengths)
        equal(got, want, exact=False)
        ys, state = steps(step, p, xc, state, mask)
        np.testing.assert_allclose(got[0], ys, **TOL)
        for h, s in zip(a.module.get_hidden_state(-1), state):
            np.testing.assert_allclose(h, s, **TOL)
    assert scan_split.SPLIT_CALLS[0] > before


def test_need_grad_input_false(rng):
    make, _, _, H = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 7, D)), rng.standard_normal((T, 7, H))
    a, b = model(make, "on"), model(make, "off")
    before = scan_split.SPLIT_CALLS[0]
    for _ in range(3):
        got, want = train(a, x, g, False), train(b, x, g, False)
        assert got[1] is None
        equal(got, want)
    assert scan_split.SPLIT_CALLS[0] > before


def test_one_row_does_not_split(rng):
    make, _, _, H = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 1, D)), rng.standard_normal((T, 1, H))
    a, b = model(make, "on"), model(make, "off")
    before = scan_split.SPLIT_CALLS[0]
    for _ in range(3):
        equal(train(a, x, g), train(b, x, g))
    assert scan_split.SPLIT_CALLS[0] == before
    assert all("no batch split: 1 row" in k for k in notes(a)), notes(a)


def test_auto_rule_needs_rows_and_threads(rng):
    """ "auto": 5 rows are too few; 16 rows split only in calls with >= 2 BLAS threads."""
    make, _, _, H = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 5, D)), rng.standard_normal((T, 5, H))
    small = model(make, "auto")
    train(small, x, g)
    assert all("no batch split: 5 rows < 16" in k for k in notes(small)), notes(small)
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    a, b = model(make, "auto"), model(make, "off")
    try:
        tn.set_blas_threads(1)
        before = scan_split.SPLIT_CALLS[0]
        for _ in range(3):
            equal(train(a, x, g), train(b, x, g))
        assert scan_split.SPLIT_CALLS[0] == before  # one thread: never split
        assert all("in owned calls" in k for k in notes(a)), notes(a)
        if scan_split.cpus() >= 2:
            tn.set_blas_threads(2)
            for _ in range(2):
                equal(train(a, x, g), train(b, x, g))
            assert scan_split.SPLIT_CALLS[0] > before
    finally:
        tn.set_blas_threads("auto")


def _body(step, batch=4, h=3):
    z = np.zeros
    return tn.trace(step, z((batch, h)), z((batch, 2)), z((2, h)), names=["h", "x", "W"])


def test_rebatch_refuses_bodies_that_mix_rows():
    def rowwise(h, x, W):
        h2 = tn.tanh(x @ W + h * 2.0)
        return [h2, h2]

    graph = scan_split.rebatch(_body(rowwise), 1, 1, 2)
    assert not isinstance(graph, str), graph
    graph.verify()
    assert [n.shape for n in graph.outputs] == [(2, 3), (2, 3)]

    def summed(h, x, W):  # a sum over the batch
        h2 = tn.tanh(x @ W + tn.sum(h, axis=0))
        return [h2, h2]

    def mixed(h, x, W):  # rows of h against each other
        h2 = tn.tanh(x @ W + tn.transpose(h) @ h)
        return [h2, h2]

    def shifted(h, x, W):  # row r from row r - 1
        h2 = tn.tanh(x @ W + tn.concat([h[:1], h[:-1]], axis=0))
        return [h2, h2]

    def reversed_rows(h, x, W):  # row r from row B - 1 - r
        h2 = tn.tanh(x @ W + h[::-1])
        return [h2, h2]

    for fn in (summed, mixed, shifted, reversed_rows):
        assert isinstance(scan_split.rebatch(_body(fn, h=4), 1, 1, 2), str), fn.__name__


@pytest.mark.parametrize("reverse", [False, True])
def test_user_scan_final_carries_and_initial_state_gradients(reverse):
    """A tn.scan whose final carries are read (the loss) and whose initial states get gradients
    (the reverse loop's final carries): split = unsplit = the reference interpreter."""
    from scan_bodies import lstm_arrays, lstm_body

    from tapernn.interpret import interpret

    rng = np.random.default_rng(7)
    B, H = 7, 130
    arrays = lstm_arrays(rng, 4, B, D, H)

    def loss(*v):
        r = tn.scan(lstm_body(B, D, H), v[:2], v[2:3], v[3:], reverse=reverse)
        return tn.sum(r.ys[0] * r.ys[0]) + tn.sum(tn.tanh(r.carries[1]) * r.carries[0])

    graph = tn.grad(tn.trace(loss, *arrays))
    want = interpret(graph, *arrays)
    got = {}
    for mode in ("on", "off"):
        compiled = tn.compile(graph, options=tn.PlanOptions(batch_split=mode, layout="batch"))
        before = scan_split.SPLIT_CALLS[0]
        for _ in range(3):
            got[mode] = [np.array(a) for a in compiled(*arrays)]
        assert (scan_split.SPLIT_CALLS[0] > before) == (mode == "on")
    for a, b, c in zip(got["on"], got["off"], want):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, **TOL)


@pytest.mark.parametrize("threshold", ["strided_min_bytes", "kernel_min_size"])
def test_halves_are_planned_and_lowered_as_the_whole_batch(threshold, rng):
    """A size threshold between the half's and the whole batch's values: the halves decide as
    the whole batch does (plan_options.SIZE_ROWS), so their programs match the full body's and
    the split runs, bit for bit."""
    make, _, _, H = CELLS["fastlstm"]
    rows = 8
    value = {"strided_min_bytes": rows * 4 * H * 8, "kernel_min_size": rows * H}[threshold]
    x, g = rng.standard_normal((T, rows, D)), rng.standard_normal((T, rows, H))
    a, b = model(make, "on"), model(make, "off")
    for m, mode in ((a, "on"), (b, "off")):
        m.set_plan_options(tn.PlanOptions(layout="batch", batch_split=mode, **{threshold: value}))
    for _ in range(3):
        got, want = train(a, x, g), train(b, x, g)
        equal(got, want)
    before = scan_split.SPLIT_CALLS[0]
    train(a, x, g)
    assert scan_split.SPLIT_CALLS[0] - before == 2, notes(a)


def test_with_background_compilation(rng, monkeypatch):
    """The default protocol: calls before the switch call run NumPy, unsplit (the full body's
    kernels are not in place); from the switch call on the kernels run, and then the halves."""
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    make, _, _, H = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 8, D)), rng.standard_normal((T, 8, H))
    a, b = model(make, "on"), model(make, "off")
    counts = []
    for _ in range(4):
        before = scan_split.SPLIT_CALLS[0]
        got = train(a, x, g)
        counts.append(scan_split.SPLIT_CALLS[0] - before)
        equal(got, train(b, x, g))
    assert counts[0] == 0 and counts[-1] == 2, counts


def check_equations(model, step, n_states: int, x, g, got, rng) -> None:
    """A split/owned model's training results `got` = (y, dx, parameter grads) against the
    cell's NumPy equations: y at TOL, every gradient along random directions against complex
    steps of the equations (all together, and each parameter's alone)."""
    p = {k: v.data.copy() for k, v in model.module.named_parameters().items()}
    y, gx, pg = got
    zero = tuple(np.zeros((x.shape[1], y.shape[-1])) for _ in range(n_states))
    np.testing.assert_allclose(y, steps(step, p, x, zero)[0], **TOL)
    arrays = dict(p, input=x)
    directions = {k: rng.standard_normal(v.shape) for k, v in arrays.items()}

    def f(arr):
        return steps(step, {k: arr[k] for k in p}, arr["input"], zero)[0]

    want = directional(f, arrays, directions, g)
    grads = dict({k: pg[f"0.{k}"] for k in p}, input=gx)
    assert np.isclose(sum(np.sum(grads[k] * directions[k]) for k in arrays), want, **TOL)
    for k in p:  # and each parameter's alone
        one = {j: directions[j] * (j == k) for j in arrays}
        np.testing.assert_allclose(
            np.sum(grads[k] * directions[k]), directional(f, arrays, one, g), **TOL, err_msg=k
        )
