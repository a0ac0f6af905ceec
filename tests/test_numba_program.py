"""Whole-program numba kernels (tapernn/backends/numba_program.py, program_source.py): a small
training step's forward and backward programs each run as ONE @njit call (the NumPy program and
the Python loop are patched to fail), equal to NumPy equations (complex-step gradients) and to
the NumPy backend to 1e-12 in float64, float32 within 1e-5, random cells (tests/cell_fuzz.py)
against their NumPy oracle and the NumPy backend; a program the generator does not lower, or
one numba rejects, keeps the NumPy program and says why; the background protocol."""

import numpy as np
import pytest
from cell_reference import complex_step_grads, fastlstm_step, gru_step, lstm_step, rnn_step, run
from test_numba_loop import forbid_python_loop, params_of

import tapernn as tn
from tapernn import nn
from tapernn.interpret import interpret

pytest.importorskip("numba")

D, H, B, T = 3, 4, 2, 5
WHOLE = "numba whole-program kernel"
CELLS = {
    "lstm": (lambda: nn.LSTM(D, H), lstm_step, 2),
    "fastlstm": (lambda: nn.FastLSTM(D, H), fastlstm_step, 2),
    "gru": (lambda: nn.GRU(D, H), gru_step, 1),
    "rnn": (lambda: nn.RNN(D, H), rnn_step, 1),
}


def forbid_numpy_programs(monkeypatch):
    """Every whole-program kernel's NumPy program (and every Python loop) raises if it runs."""
    from tapernn.backends import numba_program

    attach = numba_program.attach

    def fail(*args):
        raise AssertionError("the NumPy program ran instead of the whole-program kernel")

    def attach_forbidding(compiled):
        attach(compiled)
        if compiled.program_kernel is not None:
            compiled.program_kernel.numpy_fn = fail

    monkeypatch.setattr(numba_program, "attach", attach_forbidding)
    forbid_python_loop(monkeypatch)


def training_step(module, xs, seed, backend, calls=1):
    seq = nn.Sequencer(module, unroll=False)
    tn.set_backend(backend)
    try:
        for _ in range(calls):
            got = seq.forward(xs)
            seq.zero_grad_parameters()
            grad_x = seq.backward(xs, seed)
    finally:
        tn.set_backend("numpy")
    return seq, got, grad_x


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cells_run_as_one_kernel_per_program_and_equal_numpy_equations(name, monkeypatch):
    make, step, n_states = CELLS[name]
    tn.manual_seed(7)
    cell, twin = make(), make()
    twin.load_state_dict(cell.state_dict())
    rng = np.random.default_rng(2)
    xs, seed = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    _, want, want_dx = training_step(twin, xs, seed, "numpy", calls=2)
    forbid_numpy_programs(monkeypatch)
    seq, got, grad_x = training_step(cell, xs, seed, "numba", calls=2)
    pair = seq._runtime.last.training_pair
    assert [pair.forward.report.kernel, pair.backward.report.kernel] == [WHOLE] * 2
    assert [loop.kernel for loop in seq.compile_report().loops] == [f"called from the {WHOLE}"] * 2
    expected, _ = run(step, params_of(cell), xs, n_states, H)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    exact = complex_step_grads(step, params_of(cell), xs, n_states, H, seed)
    np.testing.assert_allclose(grad_x, exact["input"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_x, want_dx, rtol=1e-12, atol=1e-12)
    for (pname, p), q in zip(cell.named_parameters().items(), twin.parameters()):
        np.testing.assert_allclose(p.grad, exact[pname], rtol=1e-10, atol=1e-12, err_msg=pname)
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-12, err_msg=pname)


def test_the_tutorial_step_calls_one_kernel_per_program(monkeypatch):
    """(1, 5, 5) float32 FastLSTM as tools/bench.py times it: forward and backward are each a
    call of the kernel itself (the program's function is the kernel, nothing in between)."""
    forbid_numpy_programs(monkeypatch)
    x = np.ones((5, 1, 5), np.float32)
    seq, _, _ = training_step(nn.FastLSTM(5, 5).float(), x, x, "numba", calls=2)
    pair = seq._runtime.last.training_pair
    for compiled in (pair.forward, pair.backward):
        assert compiled.report.kernel == WHOLE
        kernel = compiled.program_kernel.handle.kernel
        assert compiled.program.fn.kernel is kernel  # (numba_program.runner)
    assert f"program                   forward: {WHOLE}; backward: {WHOLE}" in str(
        seq.compile_report()
    )


def test_a_returned_loop_slab_is_computed_into_its_out_array(monkeypatch):
    """The training forward returns its loop's slab (saved for backward): the loop kernel is
    called with that out array as its slab, so the workspace holds no slab and nothing is
    copied after the loop (issue 16: the (1, 5, 5) rolled peak)."""
    forbid_numpy_programs(monkeypatch)
    x = np.ones((5, 1, 5), np.float32)
    seq, _, _ = training_step(nn.FastLSTM(5, 5).float(), x, x, "numba", calls=2)
    fwd = seq._runtime.last.training_pair.forward
    (loop,) = [n for n in fwd.graph.nodes if n.op == "scan"]
    assert loop in fwd.graph.outputs
    source = fwd.program_kernel.handle.source
    call = next(line for line in source.splitlines() if "loop0(" in line)
    assert call.split("loop0(")[1].startswith("out")
    assert f"({loop.size},))" not in source  # (no workspace view of the slab's size)


def test_float32_training_steps_agree_with_the_numpy_backend(monkeypatch):
    tn.manual_seed(8)
    a = nn.GRU(D, H).astype(np.float32)
    b = nn.GRU(D, H).astype(np.float32)
    b.load_state_dict(a.state_dict())
    out = []
    for cell, backend in ((b, "numpy"), (a, "numba")):
        if backend == "numba":
            forbid_numpy_programs(monkeypatch)
        res = []
        for k in range(2):  # another length: other programs
            r = np.random.default_rng(k)
            x = r.standard_normal((T + k, B, D)).astype(np.float32)
            g = r.standard_normal((T + k, B, H)).astype(np.float32)
            _, y, gx = training_step(cell, x, g, backend)
            res.append((y, gx, [p.grad.copy() for p in cell.parameters()]))
        out.append(res)
    for (ya, gxa, pa), (yb, gxb, pb) in zip(*out):
        assert ya.dtype == gxa.dtype == yb.dtype == np.float32
        np.testing.assert_allclose(ya, yb, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gxa, gxb, rtol=1e-5, atol=1e-5)
        for p, q in zip(pa, pb):
            assert p.dtype == np.float32
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [1, 2, 7])  # (T > 1; 2: a backward over 40 loop nests)
def test_random_cells_equal_their_oracle_and_the_numpy_backend(seed, monkeypatch):
    from cell_fuzz import make_case, make_cell, numpy_outputs

    case = make_case(seed)
    x, seed_grad = case.x, case.seed_grad  # (float64 whatever the case's dtype)
    results = []
    for backend in ("numpy", "numba"):
        if backend == "numba":
            forbid_numpy_programs(monkeypatch)
        cells = [
            make_cell(s, p, f"FuzzCell{k}") for k, (s, p) in enumerate(zip(case.cells, case.params))
        ]
        m = nn.Sequencer(cells[0] if len(cells) == 1 else nn.Sequential(*cells), unroll=False)
        tn.set_backend(backend)
        try:
            y = np.array(m.forward(x))
            m.zero_grad_parameters()
            dx = np.array(m.backward(x, seed_grad))
            again = np.array(m.forward(x))
        finally:
            tn.set_backend("numpy")
        grads = [np.array(p.grad) for c in cells for p in c.parameters()]
        results.append((y, dx, grads, again, m))
    (want_y, want_dx, want_grads, _, _), (y, dx, grads, again, m) = results
    pair = m._runtime.last.training_pair
    assert pair.forward.report.kernel == WHOLE
    assert pair.backward.report.kernel == WHOLE or (
        seed == 2 and "loop nests > 40" in pair.backward.report.kernel
    )
    np.testing.assert_allclose(y, numpy_outputs(case), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(again, y)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _scan_graph(step_fn, hidden=5):
    from scan_bodies import scanned

    z = np.zeros((B, hidden))
    body = tn.trace(step_fn, z, z, np.zeros((hidden, hidden)), names=["h", "x", "W"])
    rng = np.random.default_rng(hidden)
    arrays = [rng.standard_normal(s) for s in [(B, hidden), (T, B, hidden), (hidden, hidden)]]
    return tn.trace(scanned(body, 1, 1), *arrays), arrays


def _body(hidden=3):
    z = np.zeros((B, hidden))
    step = lambda h, x, w: [tn.tanh(h @ w) + x, h * x]
    return tn.trace(step, z, z, np.zeros((hidden, hidden)), names=["h", "x", "W"])


def _arrays(hidden=3):
    rng = np.random.default_rng(hidden)
    return [rng.standard_normal(s) for s in [(B, hidden), (T, B, hidden), (hidden, hidden)]]


def test_a_program_with_an_op_it_does_not_lower_keeps_the_numpy_program():
    body, arrays = _body(), _arrays()

    def f(h, xs, w):
        r = tn.scan(body, [h], [xs], [w])
        return tn.logsumexp(r.ys[0], axis=2)  # (max is lowered since hmask: MaskZero's test)

    g = tn.trace(f, *arrays)
    c = tn.compile(g, backend="numba")
    assert c.report.kernel == f"NumPy program (no {WHOLE}: op 'logsumexp')"
    assert [loop.kernel for loop in c.report.loops] == ["numba loop kernel"]
    np.testing.assert_allclose(c(*arrays), interpret(g, *arrays)[0], rtol=1e-12)
    no_loop = tn.compile(tn.trace(lambda a: tn.tanh(a) * 2.0, arrays[0]), backend="numba")
    assert no_loop.report.kernel == "" and no_loop.program_kernel is None  # fused groups


def test_a_kernel_numba_rejects_falls_back_to_the_numpy_program(monkeypatch):
    from tapernn.backends import numba_loop

    load = numba_loop._load

    def fail_whole_programs(source):
        if "def kernel(slab" not in source:  # (loop kernels still load)
            raise RuntimeError("no kernel today")
        return load(source)

    monkeypatch.setattr(numba_loop, "_load", fail_whole_programs)
    g, arrays = _scan_graph(lambda h, x, w: [tn.sigmoid(h @ w - x), h * x], hidden=3)
    c = tn.compile(g, backend="numba")
    assert c.report.kernel == WHOLE
    assert [loop.kernel for loop in c.report.loops] == [f"called from the {WHOLE}"]
    for _ in range(2):
        for got, want in zip(c(*arrays), interpret(g, *arrays)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    why = "numba failed: RuntimeError: no kernel today"
    assert c.report.kernel == f"NumPy program ({WHOLE} failed: {why})"
    assert [loop.kernel for loop in c.report.loops] == ["numba loop kernel"]  # its own again


def test_background_compilation_call_one_numpy_program_call_two_kernel(monkeypatch):
    from tapernn.backends import background

    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    g, arrays = _scan_graph(lambda h, x, w: [tn.tanh(h @ w) * x, h + x], hidden=2)
    c = tn.compile(g, backend="numba")
    assert c.report.kernel == f"{WHOLE} (compiled in the background from call 1)"
    switch = c.program_kernel
    want = interpret(g, *arrays)
    numpy_first = tn.compile(g, backend="numpy")(*arrays)
    first = c(*arrays)
    assert switch.fn == switch._pending  # call 1 ran the NumPy program...
    for a, b in zip(first, numpy_first):
        np.testing.assert_array_equal(a, b)  # ...with the Python loop: bit for bit NumPy's
    second = c(*arrays)
    assert c.program.fn.kernel is switch.handle.kernel
    assert background.wait(0)
    for got in (first, second, c(*arrays)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_0d_outputs_repeated_outputs_and_constants():
    """A 0-d result, one value returned twice (one array, as the NumPy program returns), a
    constant returned twice (two arrays: the caller may write one)."""
    body, arrays = _body(), _arrays()

    def f(h, xs, w):
        p = tn.sigmoid(tn.scan(body, [h], [xs], [w]).ys[0])
        return [tn.sum(p), p, p, tn.zeros((2,)), tn.zeros((2,)), tn.transpose(w)]

    g = tn.trace(f, *arrays)
    c = tn.compile(g, backend="numba")
    assert c.report.kernel == WHOLE
    got = c(*arrays)
    assert got[0].shape == () and isinstance(got[0], np.ndarray)
    assert got[1] is got[2] and not np.shares_memory(got[3], got[4])
    for a, b in zip(got, interpret(g, *arrays)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_a_program_kernel_calls_its_loops_own_kernel_shared_with_the_loop_path(
    monkeypatch, tmp_path
):
    """The whole-program kernel calls the loop's separately cached @njit kernel (not a copy of
    its source): after the program kernel alone ran, the loop's dispatcher holds the one
    compiled loop function, referenced by the program kernel; the loop path of another program
    with the same loop (whole-program kernels off) reuses that function, compiling nothing.
    (An empty kernel cache and a body of its own: a program kernel loaded from numba's cache
    holds the loop's code without compiling the loop's dispatcher.)"""
    from tapernn.backends import numba_program

    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path))
    g, arrays = _scan_graph(lambda h, x, w: [tn.tanh(h @ w) * x - w[0], h + x], hidden=3)
    want = interpret(g, *arrays)
    forbid_numpy_programs(monkeypatch)
    c = tn.compile(g, backend="numba")
    assert c.report.kernel == WHOLE
    assert [loop.kernel for loop in c.report.loops] == [f"called from the {WHOLE}"]
    for _ in range(2):
        for got, expected in zip(c(*arrays), want):
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    (found,) = c.program.bodies.values()
    loop = found[2].handle  # (numba_loop.LoopKernel)
    assert loop.kernel is not None and len(loop.kernel.signatures) == 1
    program_globals = c.program_kernel.handle.kernel.py_func.__globals__
    assert any(v is loop.kernel for v in program_globals.values())
    assert "for s in range(" not in c.program_kernel.handle.source  # (not inlined)

    monkeypatch.setattr(numba_program, "ENABLED", [False])
    loop_path = tn.compile(g, backend="numba")
    assert [r.kernel for r in loop_path.report.loops] == ["numba loop kernel"]
    for got, expected in zip(loop_path(*arrays), want):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    (found,) = loop_path.program.bodies.values()
    assert found[2].handle is loop and len(loop.kernel.signatures) == 1  # nothing new


def test_workspace_slices_are_reused_after_their_values_last_read(monkeypatch):
    """program_source's workspace by liveness: a top-level value's slice (and a called loop's
    workspace, hoisted values and operand copies after the call) is taken again by a later
    value, so the workspace is smaller than its buffers laid end to end; the numbers equal
    the NumPy backend's (float64 LSTM, two training calls)."""
    import re

    tn.manual_seed(3)
    cell, twin = nn.LSTM(D, H), nn.LSTM(D, H)
    twin.load_state_dict(cell.state_dict())
    rng = np.random.default_rng(5)
    xs, seed = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    _, want, want_dx = training_step(twin, xs, seed, "numpy", calls=2)
    forbid_numpy_programs(monkeypatch)
    seq, got, grad_x = training_step(cell, xs, seed, "numba", calls=2)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_x, want_dx, rtol=1e-12, atol=1e-12)
    for p, q in zip(cell.parameters(), twin.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-12)
    pair = seq._runtime.last.training_pair
    for compiled in (pair.forward, pair.backward):
        handle = compiled.program_kernel.handle
        views = re.findall(r"c_view\(work_float64, (\d+), \(([\d, ]*)\)\)", handle.source)
        sizes = [
            int(np.prod([int(v) for v in shape.split(",") if v.strip()])) for _, shape in views
        ]
        ((_, size),) = handle.work
        assert size < sum(sizes)
    starts = [s for s, _ in views]
    assert len(set(starts)) < len(starts)  # (the backward's: a slice taken twice)
