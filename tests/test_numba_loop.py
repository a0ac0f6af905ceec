"""Whole-loop numba kernels for rolled scans (tapernn/backends/numba_loop.py, loop_source.py):
the kernel == the reference interpreter (1e-12 float64, ~1e-5 float32) and NumPy equations for
the built-in cells, values and gradients, forward and reverse loops, bodies with views, sums and
concats; the Python loop never runs where the kernel should (it is patched to fail); a body with
an op the kernel does not lower, or a kernel numba rejects, runs the Python loop and says so;
the background protocol (call 1 the Python loop, call 2 on the kernel). Each distinct body costs
a numba compilation (~1-2 s cold): the bodies here are few and small."""

import numpy as np
import pytest
from cell_reference import complex_step_grads, fastlstm_step, gru_step, lstm_step, rnn_step, run
from scan_bodies import random_arrays, rnn_scan, scanned

import tapernn as tn
from tapernn import nn, scan_run
from tapernn.interpret import interpret

pytest.importorskip("numba")

D, H, B, T = 3, 4, 2, 5

CELLS = {
    "lstm": (lambda: nn.LSTM(D, H), lstm_step, 2),
    "fastlstm": (lambda: nn.FastLSTM(D, H), fastlstm_step, 2),
    "gru": (lambda: nn.GRU(D, H), gru_step, 1),
    "rnn": (lambda: nn.RNN(D, H), rnn_step, 1),
}


@pytest.fixture(autouse=True)
def loop_kernels_alone(monkeypatch):
    """These tests are about the loop kernels: no whole-program kernel inlines them
    (tests/test_numba_program.py tests those)."""
    from tapernn.backends import numba_program

    monkeypatch.setattr(numba_program, "ENABLED", [False])


def forbid_python_loop(monkeypatch):
    """The Python loop raises if it runs: the test passes only if the kernels ran."""

    def make_runner(compiled, attrs, **_kw):
        def run(*args, out=None):
            raise AssertionError("the Python loop ran instead of the numba loop kernel")

        return run

    monkeypatch.setattr(scan_run, "make_runner", make_runner)


@pytest.fixture
def no_python_loop(monkeypatch):
    forbid_python_loop(monkeypatch)


def kernels_of(report):
    return [loop.kernel for loop in report.loops]


def params_of(m):
    return {k: p.data.copy() for k, p in m.named_parameters().items()}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_rolled_cells_on_the_loop_kernel_equal_numpy_equations(name, no_python_loop):
    make, step, n_states = CELLS[name]
    tn.manual_seed(7)
    cell = make()
    seq = nn.Sequencer(cell, unroll=False)
    rng = np.random.default_rng(2)
    xs, seed = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    tn.set_backend("numba")
    try:
        got = seq.forward(xs)
        seq.zero_grad_parameters()
        grad_x = seq.backward(xs, seed)
    finally:
        tn.set_backend("numpy")
    assert kernels_of(seq.compile_report()) == ["numba loop kernel"] * 2
    expected, _ = run(step, params_of(cell), xs, n_states, H)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    exact = complex_step_grads(step, params_of(cell), xs, n_states, H, seed)
    np.testing.assert_allclose(grad_x, exact["input"], rtol=1e-10, atol=1e-12)
    for pname, p in cell.named_parameters().items():
        np.testing.assert_allclose(p.grad, exact[pname], rtol=1e-10, atol=1e-12, err_msg=pname)


def test_float32_training_steps_agree_with_the_numpy_backend(monkeypatch):
    tn.manual_seed(8)
    a = nn.FastLSTM(D, H).astype(np.float32)
    b = nn.FastLSTM(D, H).astype(np.float32)
    b.load_state_dict(a.state_dict())
    out = []
    for cell, backend in ((b, "numpy"), (a, "numba")):
        if backend == "numba":
            forbid_python_loop(monkeypatch)
        seq = nn.Sequencer(cell, unroll=False)
        tn.set_backend(backend)
        try:
            for k in range(3):  # later calls, and another length (the same kernels)
                n = T + 2 * k
                r = np.random.default_rng(k)
                x = r.standard_normal((n, B, D)).astype(np.float32)
                g = r.standard_normal((n, B, H)).astype(np.float32)
                seq.zero_grad_parameters()
                y = seq.forward(x)
                gx = seq.backward(x, g)
        finally:
            tn.set_backend("numpy")
        assert y.dtype == gx.dtype == np.float32
        out.append((y, gx, [p.grad.copy() for p in cell.parameters()]))
    (yb, gxb, pb), (ya, gxa, pa) = out
    np.testing.assert_allclose(ya, yb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gxa, gxb, rtol=1e-5, atol=1e-5)
    for p, q in zip(pa, pb):
        assert p.dtype == np.float32
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


# step-op lists of tests/test_pipeline_random.py's STEP_OPS covering all of them: sums with and
# without keepdims, slices, concat, reshape, maximum, transposes, int indexing, exp, sigmoid
BODIES = [([2, 3, 6, 7], False), ([1, 4, 5], True)]


@pytest.mark.parametrize("ops, reverse", BODIES)
def test_fuzz_bodies_values_and_gradients_equal_the_interpreter(ops, reverse, no_python_loop):
    from test_pipeline_random import STEP_OPS

    def step(h, x, w, u):
        h = STEP_OPS[0](h, x, w, u)
        for k in ops:
            h = STEP_OPS[k](h, x, w, u)
        return [h, h, h * x]

    z = np.zeros((B + 1, 4))
    body = tn.trace(step, z, z, np.zeros((4, 4)), np.zeros((4, 4)), names=["h", "x", "W", "U"])
    rng = np.random.default_rng(sum(ops))
    arrays = random_arrays(rng, 6)
    g = tn.grad(tn.trace(scanned(body, 1, 1, reverse=reverse), *arrays))
    arrays += [rng.standard_normal(i.shape) for i in g.inputs[len(arrays) :]]
    c = tn.compile(g, backend="numba")
    assert kernels_of(c.report) == ["numba loop kernel"] * 2
    for got, want in zip(c(*arrays), interpret(g, *arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_an_unsupported_body_runs_the_python_loop_and_says_why():
    def step(h, x):
        return [h + tn.logsumexp(x, axis=1, keepdims=True), h * x]  # (max: lowered, hmask)

    z = np.zeros((B, H))
    body = tn.trace(step, z, z, names=["h", "x"])
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((B, H)), rng.standard_normal((T, B, H))]
    g = tn.trace(scanned(body, 1, 1), *arrays)
    c = tn.compile(g, backend="numba")
    (note,) = kernels_of(c.report)
    assert note.startswith("Python loop (no numba loop kernel: unsupported: op 'logsumexp'")
    assert "Python loop" in str(c.report)
    for got, want in zip(c(*arrays), interpret(g, *arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _rnn_graph(hidden):
    return rnn_scan(B, hidden, T, hidden)[:2]


def test_a_kernel_numba_rejects_falls_back_to_the_python_loop(monkeypatch):
    from tapernn.backends import numba_loop

    def fail(source):
        raise RuntimeError("no kernel today")

    monkeypatch.setattr(numba_loop, "_load", fail)
    monkeypatch.setattr(numba_loop, "_loops", {})  # (its failed kernel not kept: every size's)
    g, arrays = _rnn_graph(6)
    c = tn.compile(g, backend="numba")
    assert kernels_of(c.report) == ["numba loop kernel"]
    for got, want in zip(c(*arrays), interpret(g, *arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    (note,) = kernels_of(c.report)
    assert note == "Python loop (numba loop kernel: numba failed: RuntimeError: no kernel today)"


def test_background_compilation_call_one_python_loop_call_two_kernel(monkeypatch):
    from tapernn.backends import background, numba_loop

    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    monkeypatch.setattr(numba_loop, "_loops", {})  # (its kernel not made yet in this process)
    g, arrays = _rnn_graph(5)
    c = tn.compile(g, backend="numba")
    assert kernels_of(c.report) == ["numba loop kernel (compiled in the background from call 1)"]
    (switch,) = [v for k, v in c.program.bound.items() if k.startswith("scan_run")]
    want = interpret(g, *arrays)
    python_loop = tn.compile(g, backend="numpy")(*arrays)
    first = c(*arrays)
    assert switch.fn == switch._pending  # call 1 ran the Python loop...
    for a, b in zip(first, python_loop):
        np.testing.assert_array_equal(a, b)  # ...of the NumPy backend, bit for bit
    second = c(*arrays)
    assert switch.fn is not switch.runner and "kernel" in switch.fn.__kwdefaults__
    assert background.wait(0)
    for got in (first, second, c(*arrays)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_a_large_body_keeps_the_python_loop():
    from tapernn.backends.numba_loop import MAX_SIZE

    def step(h, x):
        return [tn.tanh(h * x), h]  # one fused group: a numba kernel inside the Python loop

    z = np.zeros((1, MAX_SIZE + 1))
    body = tn.trace(step, z, z, names=["h", "x"])
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(z.shape), rng.standard_normal((T, *z.shape))]
    g = tn.trace(scanned(body, 1, 1), *arrays)
    c = tn.compile(g, backend="numba")
    (note,) = kernels_of(c.report)
    assert note.startswith("Python loop (no numba loop kernel: body values of up to 4097")
    for got, want in zip(c(*arrays), interpret(g, *arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # the body's elementwise kernel is counted in the report (it said "0 compiled kernels")
    assert c.report.compiled_kernels == 0 and c.report.loop_compiled_kernels == 1
    assert "0 compiled kernels, 1 in loop bodies" in str(c.report)
