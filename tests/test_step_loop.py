"""Each half of a split loop as ONE numba call (backends/step_loop.py, PlanOptions.step_loops,
issue 19): the half's step program translated into an @njit loop calling the same kernels.
Against the Python loop over the same step program (bit for bit: same kernels, same order) and
the NumPy equations (float64, 1e-12: values, the input gradient and every parameter gradient
along random directions and each parameter alone), for FastLSTM, peephole LSTM and GRU with
packed step GEMMs, odd and even batches, float32 too, `lengths=` batches remembered across
chunks, need_grad_input=False; a step program with a statement the translator does not know
(OpenBLAS step GEMMs) keeps the Python loop and the report says why."""

import re

import numpy as np
import pytest
from cell_reference import fastlstm_step, gru_step, lstm_step
from test_batch_split import TOL, D, check_equations, equal, steps, train

import tapernn as tn
from tapernn import nn, scan_split
from tapernn.backends import numba_available, step_loop
from tapernn.backends.numba_backend import Unsupported

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
    pytest.mark.usefixtures("numba_now"),  # (conftest: kernels compiled at first calls)
]
T = 4
# weights of >= 65,536 elements: every step GEMM packed (the translator's packed call); gates of
# >= 4,096 elements a step (B >= 16): numba's gate kernels (smaller ones are NumPy ufunc lines,
# exp and tanh among them: not translated, test_numpy_tanh_keeps_the_python_loop)
CELLS = {
    "fastlstm": (lambda: nn.FastLSTM(D, 256), fastlstm_step, 2, 256),
    "lstm": (lambda: nn.LSTM(D, 256), lstm_step, 2, 256),
    "gru": (lambda: nn.GRU(D, 256), gru_step, 1, 256),
}
ONE_CALL = "each half's loop one numba call"


def model(make, on, dtype="float64", split="on", **kw):
    tn.manual_seed(0)
    m = nn.Sequencer(make(), **kw).astype(dtype)
    options = tn.PlanOptions(layout="batch", batch_split=split, own_threads="on", step_loops=on)
    m.set_plan_options(options)
    return m


def notes(m):
    return [loop.kernel for loop in m.compile_report().loops]


def ran():
    return step_loop.CALLS[0]


def translated(m):
    """How many of the model's loops run their halves as numba calls."""
    return sum(ONE_CALL in k for k in notes(m))


# float64: every loop translates (the lone float64 tanh of the FastLSTM's cell output and the
# LSTM's backward is a numba kernel with vecmath's float64 tanh since hf64; before, NumPy's
# ufunc kept those loops in Python); bit for bit the Python halves and the unsplit loop
# (batch 17 only: halves 9 | 8; the even halves 8 | 8 of B = 16 are in test_float32_bit_for_bit;
# test_step_fuse runs the same (cell, batch, dtype) configurations, its direct-write model being
# the step-loop model `a` here: one cold compile set for both files, run on one xdist worker,
# conftest.SHARED, hcold4)
@pytest.mark.parametrize("name, loops", [("gru", 2), ("lstm", 2), ("fastlstm", 2)])
@pytest.mark.parametrize("batch", [17])
def test_one_call_equals_python_loop_and_numpy_equations(name, loops, batch, rng):
    make, step, n, H = CELLS[name]
    x, g = rng.standard_normal((T, batch, D)), rng.standard_normal((T, batch, H))
    a, b, c = model(make, True), model(make, False), model(make, True, split="off")
    for _ in range(3):  # call 1 runs the full loop, 2 the Python halves (compiles), then numba
        equal(train(a, x, g), train(b, x, g))
        for m in (a, b, c):  # the next call sees other weights
            for p in m.parameters():
                p.data[...] += 0.01
    before, split = ran(), scan_split.SPLIT_CALLS[0]
    got = train(a, x, g)
    assert ran() - before == 2 * loops  # two halves each
    assert scan_split.SPLIT_CALLS[0] - split == 2
    equal(got, train(b, x, g))
    equal(got, train(c, x, g))  # the unsplit loop (the full runner: no split, no step loops)
    assert translated(a) == loops, notes(a)
    assert translated(b) == 0
    check_equations(a, step, n, x, g, got, rng)


@pytest.mark.parametrize("name", ["fastlstm", "gru", "lstm"])
@pytest.mark.parametrize("batch", [16])  # (17: test_one_call_equals_python_loop_..., hci)
def test_float32_bit_for_bit(name, batch, rng):
    make, step, n, H = CELLS[name]
    x = rng.standard_normal((T, batch, D)).astype(np.float32)
    g = rng.standard_normal((T, batch, H)).astype(np.float32)
    a, b = model(make, True, "float32"), model(make, False, "float32")
    for _ in range(3):
        equal(train(a, x, g), train(b, x, g))
    before = ran()
    got = train(a, x, g)
    assert ran() - before == 4  # two loops, two halves each
    equal(got, train(b, x, g))
    assert translated(a) == 2, notes(a)
    p = {k: v.data.astype(np.float64) for k, v in a.module.named_parameters().items()}
    zero = tuple(np.zeros((batch, H)) for _ in range(n))
    want = steps(step, p, x.astype(np.float64), zero)[0]
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["gru"])
def test_lengths_remembered_across_chunks(name, rng):
    make, step, n, H = CELLS[name]
    a, b = model(make, True), model(make, False)
    before = ran()
    remembered_chunks(a, b, step, n, H, rng)
    assert ran() > before


def remembered_chunks(a, b, step, n, H, rng):
    """`lengths=` batches of 17 rows in three chunks, twice, both models remembering: `a` bit for
    bit `b` (values, gradients, hidden states) and the NumPy equations (test_step_fuse's too)."""
    for m in (a, b):
        m.remember("both")
    rows = 17
    x, g = rng.standard_normal((11, rows, D)), rng.standard_normal((11, rows, H))
    p = {k: v.data.copy() for k, v in a.module.named_parameters().items()}
    state = tuple(np.zeros((rows, H)) for _ in range(n))
    lens = [rng.integers(1, 5, rows) for _ in range(2)] + [rng.integers(1, 4, rows)]
    for k in range(3):
        lens[k][0] = 4 if k < 2 else 3
    chunks = ((0, list(lens[0])), (4, list(lens[1])), (8, list(lens[2])))
    for lo, lengths in chunks * 2:
        hi = lo + max(lengths) if lo < 8 else 11
        xc, gc, lengths = x[lo:hi], g[lo:hi], np.array(lengths)
        mask = (np.arange(hi - lo)[:, None] < lengths)[..., None].astype(float)
        got = train(a, xc, gc, lengths=lengths)
        equal(got, train(b, xc, gc, lengths=lengths))
        ys, state = steps(step, p, xc, state, mask)
        np.testing.assert_allclose(got[0], ys, **TOL)
        for h, s in zip(a.module.get_hidden_state(-1), state):
            np.testing.assert_allclose(h, s, **TOL)
        for h, s in zip(a.module.get_hidden_state(-1), b.module.get_hidden_state(-1)):
            np.testing.assert_array_equal(h, s)
    return x, g


def test_need_grad_input_false(rng):
    make, _, _, H = CELLS["gru"]
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    a, b = model(make, True), model(make, False)
    before = ran()
    for _ in range(3):
        got = train(a, x, g, need_grad_input=False)
        assert got[1] is None
        equal(got, train(b, x, g, need_grad_input=False))
    assert ran() > before


def test_a_step_program_that_does_not_translate_keeps_the_python_loop(rng):
    # H = 130: the GRU's (130, 390) recurrent weight is not packed: OpenBLAS step GEMMs
    make = lambda: nn.GRU(D, 130)
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, 130))
    a, b = model(make, True), model(make, False)
    before = ran()
    for _ in range(3):
        equal(train(a, x, g), train(b, x, g), exact=False)
    assert ran() == before
    assert all("halves' loops in Python: call of np_matmul" in k for k in notes(a)), notes(a)


def test_translate_refuses_what_it_does_not_know():
    src = "def program(a0, a1, *, np_array, f):\n    v2 = f(a0, a1)\n    return (v2,)\n"
    with pytest.raises(Unsupported, match="call of f"):
        step_loop.translate(src, {"f": len, "np_array": np.array}, 1, 1, 0, 0)
    src = "def program(a0, a1, *, i3):\n    v2 = a0[i3]\n    return (v2,)\n"
    with pytest.raises(Unsupported, match="index"):
        step_loop.translate(src, {"i3": (None,)}, 1, 1, 0, 0)


def test_off_by_option(rng):
    make, _, _, H = CELLS["gru"]
    x, g = rng.standard_normal((T, 6, D)), rng.standard_normal((T, 6, H))
    b = model(make, False)
    before = ran()
    for _ in range(3):
        train(b, x, g)
    assert ran() == before
    assert not any(ONE_CALL in k or "halves' loops" in k for k in notes(b))


def test_numpy_tanh_keeps_the_python_loop(rng, monkeypatch):
    # float64 FastLSTM with its lone tanh a NumPy ufunc again (as before hf64): NumPy's SIMD
    # tanh may round otherwise than numba's, so the translator refuses it and the halves keep
    # the Python loop
    from tapernn import fused_lowering

    monkeypatch.setitem(fused_lowering.NUMBA_LONE_OPS, "float64", ("sigmoid",))
    make, _, _, H = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    a, b = model(make, True), model(make, False)
    before = ran()
    for _ in range(3):
        equal(train(a, x, g), train(b, x, g))
    assert ran() == before
    assert any("halves' loops in Python: call of np_tanh" in k for k in notes(a)), notes(a)


def test_feature_major_loops_do_not_split_and_stay_right(rng):
    make, step, n, H = CELLS["gru"]
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    ms = []
    for on in (True, False):
        tn.manual_seed(0)
        m = nn.Sequencer(make())
        m.set_plan_options(
            tn.PlanOptions(layout="feature", batch_split="on", own_threads="on", step_loops=on)
        )
        ms.append(m)
    before = ran()
    for _ in range(3):
        got = train(ms[0], x, g)
        equal(got, train(ms[1], x, g))
    assert ran() == before
    assert translated(ms[0]) == 0
    p = {k: v.data.copy() for k, v in ms[0].module.named_parameters().items()}
    zero = tuple(np.zeros((16, H)) for _ in range(n))
    np.testing.assert_allclose(got[0], steps(step, p, x, zero)[0], **TOL)


@pytest.mark.parametrize("cell", ["stacked", "mufuru"])
def test_loops_with_several_lent_panels(cell, rng):
    # a backward loop packing several weights into lent .grad panels (two stacked FastLSTMs, a
    # MuFuRu): the Python runner zeroed `_lent[position]` for each panel's OUTPUT position
    # instead of its dest slot -- IndexError ("scan failed: list index out of range") at the
    # first backward before (found here; on main too)
    H = 130
    make = {
        "stacked": lambda: nn.Sequential(nn.FastLSTM(D, H), nn.FastLSTM(H, H)),
        "mufuru": lambda: nn.MuFuRu(D, H),
    }[cell]
    x, g = rng.standard_normal((T, 4, D)), rng.standard_normal((T, 4, H))
    got = []
    for backend in ("numba", "numpy"):
        tn.set_backend(backend)
        tn.manual_seed(0)
        m = nn.Sequencer(make())
        for _ in range(2):
            out = train(m, x, g)
        got.append(out)
    tn.set_backend("numba")
    equal(got[0], got[1], exact=False)


def test_a_call_never_waits_for_the_step_loops_compile(rng, monkeypatch):
    """The step loops run the same kernels in the same order as the Python halves, so the
    switch is not tied to a call number: while their compile is pending, calls run the Python
    halves instead of waiting (a cold kernel cache made the third call of a (32, 50, 256)
    FastLSTM wait ~11 s). The compile is held here until the test releases it."""
    from tapernn.backends import background

    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    held, request = [], background.request

    def hold(handle, key):
        if not isinstance(handle, step_loop.StepLoop):
            return request(handle, key)
        held.append((handle, key, background.threading.Event()))
        return held[-1][2]

    monkeypatch.setattr(background, "request", hold)
    make, *_, H = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 17, D)), rng.standard_normal((T, 17, H))
    a, b = model(make, True), model(make, False)

    def call():
        done = []
        worker = background.threading.Thread(target=lambda: done.append(train(a, x, g)))
        worker.start()
        worker.join(120)
        if worker.is_alive():  # (the old switch: waits for the held compile)
            for *_, event in held:
                event.set()
            worker.join()
            pytest.fail("a call waited for the step loops' compile")
        return done[0]

    before = ran()
    for _ in range(4):
        equal(call(), train(b, x, g))
    assert held and ran() == before  # asked for, not run: the Python halves ran
    for handle, key, event in held:
        handle.prepare(key)
        event.set()
    got = call()
    assert ran() - before == 4  # now both loops' halves, one numba call each
    equal(got, train(b, x, g))
    assert translated(a) == 2, notes(a)


def test_a_float32_step_loop_whose_kernels_have_only_float64_signatures(rng, monkeypatch):
    """A 2-D fused group's dispatcher is closed once its one signature is compiled. A float32
    step loop typed while the groups it calls had only their float64 signature (a float64
    model of the same cell earlier in the process, the float32 groups still compiling in the
    background: the cold CI's test_numba_background) failed with a TypingError, and its halves
    ran in Python for good (same bits, slower). Step loops type their callees through
    dispatchers of their own (step_callees). Here: a float32 model's step loop compiled again
    (its text new to numba's cache: typed, not loaded) with every group it calls replaced by a
    dispatcher of the same function holding only the float64 signature, closed; it compiles
    and computes the same bits as the model's own."""
    import copy
    import sys
    import uuid

    from numba import types

    from tapernn.backends import step_callees, step_fuse

    make, _, _, H = CELLS["fastlstm"]
    x = rng.standard_normal((T, 16, D)).astype(np.float32)
    g = rng.standard_normal((T, 16, H)).astype(np.float32)
    # (the plain translation: its gate kernels called from the step loop; with step_direct,
    # step_pass's runs call none -- their strided twins instead)
    monkeypatch.setattr(step_fuse, "DIRECT", [False])
    a = model(make, True, "float32")
    seen, call = [], step_loop.StepLoop.__call__
    monkeypatch.setattr(
        step_loop.StepLoop,
        "__call__",
        lambda self, *args: (seen.append((self, copy.deepcopy(args))), call(self, *args))[1],
    )
    for _ in range(3):
        train(a, x, g)
    loop, args = seen[-1]
    callees = re.findall(r"'(tapernn_k\w+)'", loop.source)  # (the groups' modules)
    assert callees
    for name in set(callees):
        module = sys.modules[name]
        own = type(module.kernel)(
            py_func=module.kernel.py_func, targetoptions=dict(module.kernel.targetoptions)
        )
        for sig in module.kernel.signatures:
            wide = [
                types.Array(types.float64, t.ndim, t.layout, readonly=not t.mutable) for t in sig
            ]
            own.compile(tuple(wide))
        own.disable_compile()
        monkeypatch.setattr(module, "kernel", own)
    monkeypatch.setattr(step_callees, "_callees", {})
    again = step_loop.StepLoop(
        loop.source + f"# {uuid.uuid4().hex}\n", loop.arrays, loop.length, loop.reverse, loop.late
    )
    assert again.prepare(again.key(args)), again.error
    mine, theirs = copy.deepcopy(args), copy.deepcopy(args)
    got, want = again(*mine), call(loop, *theirs)
    for u, v in zip(list(got) + list(mine), list(want) + list(theirs)):
        if isinstance(u, np.ndarray):
            assert u.dtype == np.float32 and np.array_equal(u, v, equal_nan=True)


def test_one_step_loop_kernel_serves_two_batches_and_two_widths(rng, monkeypatch):
    """A step loop's text has no size in it (its column offsets and widths, the half's rows, a
    pass's width are read from its `_dims` argument): FastLSTMs of (batch, H) (17, 256) --
    halves 9 | 8, test_one_call_...'s model -- and (16, 128) -- halves 8 | 8 -- run ONE
    compiled kernel per direction (the same text, so the same cache module and digest), each
    with its own sizes, and each equals the NumPy equations (1e-12: values and gradients)."""
    import io
    import tokenize

    from tapernn.backends.numba_backend import _module_name

    seen: dict = {}
    choose = step_loop.Halves.choose

    def spy(self, runner, *args):
        seen.setdefault((id(runner), bool(runner.attrs["reverse"])), self)
        return choose(self, runner, *args)

    monkeypatch.setattr(step_loop.Halves, "choose", spy)
    loops, compiled = {}, {}
    for batch, H in ((17, 256), (16, 128)):
        seen.clear()
        x, g = rng.standard_normal((T, batch, D)), rng.standard_normal((T, batch, H))
        a = model(lambda H=H: nn.FastLSTM(D, H), True)
        for _ in range(3):
            train(a, x, g)
        got = train(a, x, g)
        assert translated(a) == 2, notes(a)
        check_equations(a, fastlstm_step, 2, x, g, got, rng)
        for (_, reverse), halves in seen.items():
            loops.setdefault(reverse, []).extend(halves.loops)
            compiled.setdefault(reverse, []).append(len(halves.loops[0].kernel.signatures))
    for reverse, found in loops.items():
        assert len(found) == 4  # (two models, two halves)
        assert len({f.source for f in found}) == 1, reverse  # one text
        assert len({_module_name(f.source) for f in found}) == 1
        assert len({id(f.kernel) for f in found}) == 1  # one compiled kernel
        # (compiled once: the same types -- the second model added no signature; a test run
        # before may have added others, test_step_fuse's strided twin's)
        assert compiled[reverse][0] == compiled[reverse][1] >= 1
        first, second = (
            {tuple(f.arrays[-1]) for f in found[:2]},
            {tuple(f.arrays[-1]) for f in found[2:]},
        )
        assert not first & second and 256 in found[0].arrays[-1] and 128 in found[2].arrays[-1]
        source = found[0].source
        # structural: no integer literal but 0 and 1 in the kernel or its passes
        body = source[source.index("\n@njit(cache=True, nogil=True, error_model") :]
        body = re.sub(r"(?m)^    n\d+ = _dims\[\d+\]$", "", body)  # (its sizes, read)
        numbers = {
            t.string
            for t in tokenize.generate_tokens(io.StringIO(body).readline)
            if t.type == tokenize.NUMBER and t.string.isdigit()
        }
        assert numbers <= {"0", "1"}, numbers
