"""tapernn owning both cores in a program call (own_threads.py, issue 19): BLAS at one thread,
the loops' batch halves and the time-batched GEMMs' halves on the caller's thread and one
worker. Owned = unowned = the NumPy equations (float64, 1e-12), values and every gradient, for
FastLSTM, peephole LSTM and GRU, odd batches, `lengths=` batches remembered across chunks,
need_grad_input=False; B = 1 and the small shapes are not owned; the rule ("auto": a loop that
splits, >= 2 CPUs, a BLAS policy of >= 2 threads) in the report and in the calls; the caller's
BLAS setting restored after a step, also after an exception inside it."""

import numpy as np
import pytest
from test_batch_split import CELLS, TOL, D, T, check_equations, notes, steps, train

import tapernn as tn
from tapernn import nn, own_threads, scan_split
from tapernn.backends import numba_available
from tapernn.blas import limiter

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
]


@pytest.fixture(autouse=True)
def numba_now(monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")  # kernels from call 1: split from call 2
    monkeypatch.setattr(own_threads, "MIN_FLOPS", 0.0)  # every 2-D time-batched GEMM splits
    before = tn.get_backend()
    tn.set_backend("numba")
    yield
    tn.set_backend(before)
    tn.set_blas_threads("auto")


def model(make, own, split=None, **kw):
    tn.manual_seed(0)
    m = nn.Sequencer(make(), **kw)
    split = split or ("off" if own == "off" else "on")
    m.set_plan_options(tn.PlanOptions(layout="batch", batch_split=split, own_threads=own))
    return m


def counts():
    return scan_split.SPLIT_CALLS[0], own_threads.SPLIT_GEMMS[0]


def close(a, b):
    for u, v in zip(a[:2], b[:2]):
        if u is None:
            assert v is None
            continue
        np.testing.assert_allclose(u, v, **TOL)
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        np.testing.assert_allclose(a[2][k], b[2][k], **TOL, err_msg=k)


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("batch", [5, 8])
def test_owned_equals_unowned_and_numpy_equations(name, batch, rng):
    make, step, n, H = CELLS[name]
    x, g = rng.standard_normal((T, batch, D)), rng.standard_normal((T, batch, H))
    a, b = model(make, "on"), model(make, "off")
    for _ in range(2):  # call 1 runs the full loop (the kernels take over), then splits
        close(train(a, x, g), train(b, x, g))
        for m in (a, b):  # the next call sees other weights
            for p in m.parameters():
                p.data[...] += 0.01
    for m in (a, b):
        for p in m.parameters():
            p.data[...] -= 0.01
    loops, gemms = counts()
    got = train(a, x, g)
    assert counts()[0] - loops == 2  # the forward and the backward loop split
    # the forward's projection, the backward's dX and weight gradients: at least 3 split
    assert counts()[1] - gemms >= 3
    close(got, train(b, x, g))
    assert "owned (BLAS at 1 thread" in a.compile_report().threads
    assert b.compile_report().threads == ""
    check_equations(a, step, n, x, g, got, rng)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_lengths_remembered_across_chunks(name, rng):
    make, step, n, H = CELLS[name]
    a, b = model(make, "on"), model(make, "off")
    for m in (a, b):
        m.remember("both")
    rows = 5
    x, g = rng.standard_normal((11, rows, D)), rng.standard_normal((11, rows, H))
    p = {k: v.data.copy() for k, v in a.module.named_parameters().items()}
    state = tuple(np.zeros((rows, H)) for _ in range(n))
    before = counts()
    chunks = ((0, [4, 3, 4, 1, 2]), (4, [4, 4, 2, 4, 3]), (8, [3, 1, 2, 3, 3]))
    for lo, lengths in chunks * 2:
        hi = lo + max(lengths) if lo < 8 else 11
        xc, gc, lengths = x[lo:hi], g[lo:hi], np.array(lengths)
        mask = (np.arange(hi - lo)[:, None] < lengths)[..., None].astype(float)
        got, want = train(a, xc, gc, lengths=lengths), train(b, xc, gc, lengths=lengths)
        close(got, want)
        ys, state = steps(step, p, xc, state, mask)
        np.testing.assert_allclose(got[0], ys, **TOL)
        for h, s in zip(a.module.get_hidden_state(-1), state):
            np.testing.assert_allclose(h, s, **TOL)
    after = counts()
    assert after[0] > before[0] and after[1] > before[1]


def test_need_grad_input_false(rng):
    make, _, _, H = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 7, D)), rng.standard_normal((T, 7, H))
    a, b = model(make, "on"), model(make, "off")
    before = counts()
    for _ in range(3):
        got, want = train(a, x, g, False), train(b, x, g, False)
        assert got[1] is None
        close(got, want)
    after = counts()
    assert after[0] > before[0] and after[1] > before[1]


def test_one_row_is_not_owned(rng):
    make, _, _, H = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 1, D)), rng.standard_normal((T, 1, H))
    a, b = model(make, "auto", "auto"), model(make, "off")
    before = counts()
    for _ in range(3):
        close(train(a, x, g), train(b, x, g))
    assert counts() == before
    assert all("no batch split: 1 row" in k for k in notes(a)), notes(a)
    threads = a.compile_report().threads
    assert "not owned (no loop splits its batch rows)" in threads, threads


@pytest.mark.parametrize("shape", [(1, 5, 5), (8, 20, 16)])
def test_small_shapes_are_not_owned(shape, rng, monkeypatch):
    """The default options at the tutorial shapes: no loop splits, so no call is owned (the
    GEMM threshold at its real value)."""
    monkeypatch.setattr(own_threads, "MIN_FLOPS", 8e6)
    B, t, H = shape
    tn.manual_seed(0)
    m = nn.Sequencer(nn.FastLSTM(H, H))
    x, g = rng.standard_normal((t, B, H)), rng.standard_normal((t, B, H))
    tn.set_blas_threads(2)
    before = counts()
    for _ in range(3):
        train(m, x, g)
    assert counts() == before
    assert "not owned" in m.compile_report().threads


def test_auto_rule_in_the_report_and_the_calls(rng):
    """The defaults at 16 rows (packed step GEMMs): owned in calls with >= 2 CPUs and a policy
    of two threads; never at set_blas_threads(1) or None."""
    make, _, _, H = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    a, b = model(make, "auto", "auto"), model(make, "off")
    for policy in (1, None):
        tn.set_blas_threads(policy)
        before = counts()
        for _ in range(3):
            close(train(a, x, g), train(b, x, g))
        assert counts() == before, policy
    threads = a.compile_report().threads
    assert "owned (BLAS at 1 thread" in threads and "in calls with >= 2 CPUs" in threads
    assert all("in owned calls" in k for k in notes(a)), notes(a)
    if own_threads.cpus() >= 2:
        for policy in (2, "auto"):
            tn.set_blas_threads(policy)
            before = counts()
            for _ in range(2):
                close(train(a, x, g), train(b, x, g))
            after = counts()
            assert after[0] > before[0] and after[1] > before[1], policy
        # a split that failed (its halves would not compile alike): the calls are not owned
        pair = a._runtime.last.training_pair
        for program in (pair.forward, pair.backward):
            assert program.split_runners
            for runner in program.split_runners:
                runner.failed = "injected"
        before = counts()
        close(train(a, x, g), train(b, x, g))
        assert counts() == before


def _pool_count():
    pools = limiter.pools()
    return pools[0][1]() if pools else None


def test_blas_setting_restored_also_after_an_exception(rng, monkeypatch):
    pools = limiter.pools()
    if not pools:
        pytest.skip("no BLAS pool to set")
    set_, get = pools[0]
    user = get()
    set_(2)
    try:
        make, _, _, H = CELLS["fastlstm"]
        x, g = rng.standard_normal((T, 8, D)), rng.standard_normal((T, 8, H))
        a = model(make, "on")
        train(a, x, g)
        seen = []
        real = own_threads._mm

        def spy(*args):
            seen.append((_pool_count(), own_threads.owning()))
            return real(*args)

        monkeypatch.setattr(own_threads, "_mm", spy)
        train(a, x, g)
        assert seen and all(count == 1 for count, _ in seen), seen
        assert _pool_count() == 2 and not own_threads.owning()

        def fail(*args):
            raise RuntimeError("injected")

        for where in ("caller", "worker"):
            calls = []

            def half(*args, where=where, calls=calls):
                calls.append(1)
                on_worker = own_threads.worker_ident and not own_threads.owning()
                if (where == "worker") == bool(on_worker):
                    fail()
                return real(*args)

            monkeypatch.setattr(own_threads, "_mm", half)
            with pytest.raises(Exception, match="injected"):
                train(a, x, g)
            assert calls
            assert _pool_count() == 2, where
            assert not own_threads.owning()
        monkeypatch.setattr(own_threads, "_mm", real)
        close(train(a, x, g), train(model(make, "off"), x, g))
    finally:
        set_(user)


def test_owned_calls_from_two_user_threads(rng):
    """Two user threads training their own models at once share the one worker: the same
    results as one after the other, and the BLAS setting restored after both."""
    from concurrent.futures import ThreadPoolExecutor

    make, _, _, H = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 8, D)), rng.standard_normal((T, 8, H))
    models = [model(make, "on") for _ in range(2)]
    want = [train(model(make, "off"), x, g) for _ in range(2)]
    pools = limiter.pools()
    before = _pool_count()
    for m in models:
        train(m, x, g)  # (call 1: the kernels take over)
    before_counts = counts()
    with ThreadPoolExecutor(2) as users:
        got = list(users.map(lambda m: [train(m, x, g) for _ in range(3)][-1], models))
    for a, b in zip(got, want):
        close(a, b)
    after = counts()
    assert after[0] > before_counts[0] and after[1] > before_counts[1]
    if pools:
        assert _pool_count() == before
    assert not own_threads.owning()


@pytest.mark.parametrize("alias", ["a", "b"])
def test_split_matmul_into_its_own_input_is_not_split(alias, monkeypatch):
    """own_threads.matmul with `out` sharing memory with an input runs whole (np.matmul buffers
    that case): split, one half would write rows the other half is still reading."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64))
    b = rng.standard_normal((64, 64))
    want = a @ b
    out = a if alias == "a" else b
    before = own_threads.SPLIT_GEMMS[0]
    monkeypatch.setattr(own_threads._state, "depth", 1)  # as inside an owned call
    got = own_threads.matmul(a, b, out=out)
    monkeypatch.setattr(own_threads._state, "depth", 0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert own_threads.SPLIT_GEMMS[0] == before
    # and a fresh output does split, with the same values
    a2 = rng.standard_normal((64, 64))
    monkeypatch.setattr(own_threads._state, "depth", 1)
    got = own_threads.matmul(a2, b.copy())
    monkeypatch.setattr(own_threads._state, "depth", 0)
    assert own_threads.SPLIT_GEMMS[0] == before + 1
    np.testing.assert_allclose(got, a2 @ b, rtol=1e-12, atol=1e-12)
