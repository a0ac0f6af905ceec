"""The numba kernels' workspaces (backends/loop_source.py, program_source.py, issue 19): every
buffer of a whole-program or whole-loop kernel is a C slice of a workspace its runner makes once
and passes to every call. Against hand-written NumPy equations in float64 (1e-12): values and
gradients of FastLSTM, LSTM and GRU training steps; returned arrays (outputs, grad_input, fields,
final states, gradients) never overwritten by later calls (forward, forward, backward; backward
twice); two models of the same shape never share a workspace, also run from two threads; the
workspaces counted in the compile report's resident bytes."""

import threading

import numpy as np
import pytest
from cell_reference import complex_step_grads, fastlstm_step, gru_step, lstm_step, run
from test_numba_loop import params_of
from test_numba_program import forbid_numpy_programs

import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_loop

pytest.importorskip("numba")

D, H, B, T = 3, 4, 2, 5
TOL = {"rtol": 1e-12, "atol": 1e-12}
CELLS = {
    "fastlstm": (lambda: nn.FastLSTM(D, H), fastlstm_step, 2),
    "lstm": (lambda: nn.LSTM(D, H), lstm_step, 2),
    "gru": (lambda: nn.GRU(D, H), gru_step, 1),
}


@pytest.fixture
def numba_backend():
    before = tn.get_backend()
    tn.set_backend("numba")
    yield
    tn.set_backend(before)


def data(k):
    r = np.random.default_rng(k)
    return r.standard_normal((T, B, D)), r.standard_normal((T, B, H))


def make(name, seed=7):
    tn.manual_seed(seed)
    return nn.Sequencer(CELLS[name][0]())


def warm(seq):
    x, g = data(100)
    for _ in range(3):
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)


def workspaces(seq):
    """The workspace arrays the model's whole-program kernels' runners pass (forward, backward)."""
    pair = seq._runtime.last.training_pair
    found = []
    for compiled in (pair.forward, pair.backward):
        fn = compiled.program.fn
        assert fn.kernel is compiled.program_kernel.handle.kernel  # the kernel runs
        assert fn.work, "a kernel without a workspace"
        found += fn.work
    return found


def expected(name, seq, x, g=None):
    _, step, n_states = CELLS[name]
    p = params_of(seq.module)
    want, states = run(step, p, x, n_states, H)
    exact = None if g is None else complex_step_grads(step, p, x, n_states, H, g)
    return want, states[-1], exact


@pytest.mark.parametrize("name", sorted(CELLS))
def test_results_equal_numpy_equations_and_are_never_overwritten(name, numba_backend, monkeypatch):
    forbid_numpy_programs(monkeypatch)
    seq = make(name)
    warm(seq)
    assert workspaces(seq)
    report = seq.compile_report()
    assert all(loop.kernel.startswith("called from") for loop in report.loops)
    # forward, forward, backward; then backward twice
    x1, _ = data(1)
    x2, g2 = data(2)
    y1 = seq.forward(x1)
    fields1 = [np.array(o) for o in seq.module.outputs]
    y2 = seq.forward(x2)
    final2 = [np.array(s) for s in seq.module.get_hidden_state(-1)]
    final2_kept = seq.module.get_hidden_state(-1)
    seq.zero_grad_parameters()
    gx_a = seq.backward(x2, g2)
    grads_a = {k: p.grad.copy() for k, p in seq.module.named_parameters().items()}
    gx_b = seq.backward(x2, g2)
    grads_b = {k: p.grad for k, p in seq.module.named_parameters().items()}
    assert not np.shares_memory(gx_a, gx_b)
    assert not np.shares_memory(y1, y2)

    want1, _, _ = expected(name, seq, x1)
    want2, state2, exact = expected(name, seq, x2, g2)
    np.testing.assert_allclose(y1, want1, **TOL)
    np.testing.assert_allclose(np.stack(fields1), want1, **TOL)
    np.testing.assert_allclose(y2, want2, **TOL)
    np.testing.assert_allclose(np.stack(seq.module.outputs), want2, **TOL)
    for got, kept, want in zip(final2, final2_kept, state2):
        np.testing.assert_allclose(got, want, **TOL)
        np.testing.assert_allclose(kept, want, **TOL)
    for gx in (gx_a, gx_b):
        np.testing.assert_allclose(gx, exact["input"], rtol=1e-12, atol=1e-12)
    for k, grad in grads_a.items():
        np.testing.assert_allclose(grad, exact[k], rtol=1e-12, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(grads_b[k], 2 * exact[k], rtol=1e-12, atol=1e-12, err_msg=k)


def test_two_models_of_one_shape_have_their_own_workspaces_also_in_two_threads(numba_backend):
    a, b = make("fastlstm", 1), make("fastlstm", 2)
    warm(a)
    warm(b)
    wa, wb = workspaces(a), workspaces(b)
    assert a._runtime.last.training_pair.forward.program_kernel.handle is (
        b._runtime.last.training_pair.forward.program_kernel.handle
    )  # one compiled kernel ...
    assert not any(np.shares_memory(p, q) for p in wa for q in wb)  # ... its own workspaces
    results, errors = {}, []

    def train(seq, key):
        try:
            out = []
            for k in range(30):
                x, g = data(k)
                y = seq.forward(x)
                seq.zero_grad_parameters()
                gx = seq.backward(x, g)
                if k in (0, 29):
                    grads = {n: p.grad.copy() for n, p in seq.module.named_parameters().items()}
                    out.append((x, g, y, gx, grads))
            results[key] = out
        except Exception as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=train, args=(m, k)) for k, m in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for key, seq in enumerate((a, b)):
        for x, g, y, gx, grads in results[key]:
            want, _, exact = expected("fastlstm", seq, x, g)
            np.testing.assert_allclose(y, want, **TOL)
            np.testing.assert_allclose(gx, exact["input"], rtol=1e-12, atol=1e-12)
            for k, grad in grads.items():
                np.testing.assert_allclose(grad, exact[k], rtol=1e-12, atol=1e-12, err_msg=k)


def test_workspaces_are_counted_in_the_report(numba_backend):
    seq = make("lstm")
    warm(seq)
    pair = seq._runtime.last.training_pair
    made = sum(w.nbytes for w in workspaces(seq))
    fwd, bwd = pair.forward.report, pair.backward.report
    assert made == fwd.workspace_bytes + bwd.workspace_bytes > 0
    for compiled in (pair.forward, pair.backward):
        handle = compiled.program_kernel.handle
        assert compiled.report.workspace_bytes == numba_loop.work_bytes(handle.work)
    assert seq.compile_report().workspace_bytes == made
    assert "kernel workspace bytes" in str(seq.compile_report())
    # the module's arena counts them among the bytes it holds between calls: the forward's and
    # the backward's kernels take theirs from its one workspace per dtype (htiny7), counted once
    arena = pair.arena
    if arena is not None:
        held = {id(w.base if w.base is not None else w): w for w in workspaces(seq)}
        distinct = sum((w.base if w.base is not None else w).nbytes for w in held.values())
        assert distinct < made  # (shared: the larger of the two, not their sum)
        assert arena.nbytes >= distinct + sum(a.nbytes for a in arena.given)


def test_a_loop_kernel_on_its_own_has_a_workspace_per_runner(numba_backend, monkeypatch):
    """The loop path (no whole-program kernel): each loop's runner makes its own workspace,
    counted in its LoopReport; values equal the equations."""
    from tapernn.backends import numba_program

    monkeypatch.setattr(numba_program, "ENABLED", [False])
    seq = make("gru")
    warm(seq)
    x, g = data(5)
    y = seq.forward(x)
    seq.zero_grad_parameters()
    gx = seq.backward(x, g)
    want, _, exact = expected("gru", seq, x, g)
    np.testing.assert_allclose(y, want, **TOL)
    np.testing.assert_allclose(gx, exact["input"], rtol=1e-12, atol=1e-12)
    loops = seq.compile_report().loops
    assert [loop.kernel for loop in loops] == ["numba loop kernel"] * 2
    assert all(loop.workspace_bytes > 0 for loop in loops)


def test_a_kernel_given_too_small_a_workspace_raises(numba_backend):
    """c_view does not check its bounds: the kernel checks each workspace's size first."""
    from tapernn.backends import numba_program

    seq = make("fastlstm")
    warm(seq)
    compiled = seq._runtime.last.training_pair.forward
    run = compiled.program.fn
    seen = []

    def spy(*args):
        seen.append(args)
        return run(*args)

    compiled.program.fn = spy
    try:
        seq.forward(data(3)[0])
    finally:
        compiled.program.fn = run
    assert seen
    handle, outs, returns, n_in = run.plan
    small = [np.empty(w.size - 1, w.dtype) for w in run.work]
    too_small = numba_program.runner(handle, outs, returns, n_in, None, small)
    with pytest.raises(ValueError, match="workspace too small"):
        too_small(*seen[0])
    np.testing.assert_array_equal(run(*seen[0])[0], seq.output)


def test_two_threads_on_one_model_take_turns_with_its_workspace(numba_backend):
    """One model's calls from two threads run one at a time (its lock): every forward's output,
    computed in the one workspace, equals the equations for that call's input."""
    seq = make("lstm")
    warm(seq)
    assert workspaces(seq)
    results, errors = {0: [], 1: []}, []

    def run(key):
        try:
            for k in range(40):
                x, _ = data(2 * k + key)
                results[key].append((x, seq.forward(x)))
        except Exception as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for x, y in results[0] + results[1]:
        np.testing.assert_allclose(y, expected("lstm", seq, x)[0], **TOL)
