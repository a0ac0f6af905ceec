"""The translated step loops' fewer passes over memory (PlanOptions.step_direct, issue 19):
backends/step_fuse.py (the concatenated gate values written straight into the saved ys row, a
kernel cut into parts split by columns) and backends/step_pass.py (a run of elementwise
statements as ONE pass over the rows). Against the plain translation (step_direct=False: the
same kernels on the same elements in the same order -- bit for bit), the NumPy equations and
the reference interpreter (float64, 1e-12: values, dX, every parameter gradient), for FastLSTM,
LSTM, GRU and a user's tn.scan cell, odd and even batches, float32 too, remember/forget with
`lengths=`, need_grad_input=False, both layouts; each test counts the passes and direct-write
loops that ran."""

import numpy as np
import pytest
from cell_reference import fastlstm_step, gru_step, lstm_step
from test_batch_split import TOL, D, check_equations, equal, steps, train
from test_step_loop import remembered_chunks

import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_available, step_fuse, step_loop, step_pass, step_selects

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
    pytest.mark.usefixtures("numba_now"),  # (conftest: kernels compiled at first calls)
]
T = 4
H = 256  # (packed step GEMMs; gates of >= 4,096 elements a step at B >= 16: numba kernels)
CELLS = {
    "fastlstm": (lambda: nn.FastLSTM(D, H), fastlstm_step, 2),
    "lstm": (lambda: nn.LSTM(D, H), lstm_step, 2),
    "gru": (lambda: nn.GRU(D, H), gru_step, 1),
}


def model(make, direct, dtype="float64", layout="batch", **kw):
    tn.manual_seed(0)
    m = nn.Sequencer(make(), **kw).astype(dtype)
    m.set_plan_options(
        tn.PlanOptions(layout=layout, batch_split="on", own_threads="on", step_direct=direct)
    )
    return m


def counts():
    return step_pass.CALLS[0], step_fuse.CALLS[0], step_loop.CALLS[0]


def notes(m):
    return [loop.kernel for loop in m.compile_report().loops]


# (float64 at B = 17 (halves 9 | 8), float32 at B = 16 (8 | 8): test_step_loop's (cell, batch,
# dtype) configurations, so the direct-write model `a` here is its step-loop model `a` -- one
# cold compile for both files, which conftest.SHARED runs on one xdist worker (hcold4; before,
# the other way round here: 12 cold configurations between the two files, now 6)
@pytest.mark.parametrize("name", ["fastlstm", "lstm", "gru"])
@pytest.mark.parametrize("batch", [17])
def test_bit_for_bit_the_plain_translation_and_numpy_equations(name, batch, rng):
    make, step, n = CELLS[name]
    x, g = rng.standard_normal((T, batch, D)), rng.standard_normal((T, batch, H))
    a, b = model(make, True), model(make, False)
    for _ in range(3):  # (call 1 full loop, 2 Python halves, then the numba halves)
        equal(train(a, x, g), train(b, x, g))
        for m in (a, b):
            for p in m.parameters():
                p.data[...] += 0.01
    before = counts()
    got = train(a, x, g)
    after = counts()
    equal(got, train(b, x, g))
    assert after[0] > before[0], notes(a)  # (a pass ran in every cell's backward at least)
    assert after[2] - before[2] >= 2
    check_equations(a, step, n, x, g, got, rng)


@pytest.mark.parametrize("name", ["fastlstm", "lstm", "gru"])
@pytest.mark.parametrize("batch", [16])
def test_float32_bit_for_bit(name, batch, rng):
    make, step, n = CELLS[name]
    x = rng.standard_normal((T, batch, D)).astype(np.float32)
    g = rng.standard_normal((T, batch, H)).astype(np.float32)
    a, b = model(make, True, "float32"), model(make, False, "float32")
    for _ in range(3):
        equal(train(a, x, g), train(b, x, g))
    before = counts()
    got = train(a, x, g)
    assert counts()[0] > before[0], notes(a)
    equal(got, train(b, x, g))
    p = {k: v.data.astype(np.float64) for k, v in a.module.named_parameters().items()}
    zero = tuple(np.zeros((batch, H)) for _ in range(n))
    want = steps(step, p, x.astype(np.float64), zero)[0]
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)


def test_fastlstm_forward_writes_its_gates_into_the_row_in_one_pass(rng, monkeypatch):
    """Structural: the FastLSTM forward step's concatenate copies are gone (direct writes), and
    its add, four activations, cell update and output are one pass; the backward is one pass
    too. The report says so."""
    seen = {}
    choose = step_loop.Halves.choose

    def spy(self, runner, *args):
        seen[bool(runner.attrs["reverse"])] = self
        return choose(self, runner, *args)

    monkeypatch.setattr(step_loop.Halves, "choose", spy)
    make = CELLS["fastlstm"][0]
    x = rng.standard_normal((T, 16, D)).astype(np.float32)
    g = rng.standard_normal((T, 16, H)).astype(np.float32)
    a = model(make, True, "float32")
    for _ in range(3):
        train(a, x, g)
    fwd, bwd = seen[False].loops[0], seen[True].loops[0]
    assert "_o = 0" not in fwd.source and "w2[:, 0:256]" in fwd.concrete
    assert fwd.passes == 1 and bwd.passes == 1
    one = fwd.source[fwd.source.index("def _pass0(") : fwd.source.index("def _pass0s(")]
    assert one.count("for i1 in range(_w):") == 10  # add x4, sigmoid x3, tanh, c, h
    assert "_pass0, _pass0s, (256, " in fwd.concrete  # (the pass's width: an argument)
    for loop in (fwd, bwd):  # (copies into slices: numba_put.put, test_numba_put)
        lines = [line.strip() for line in loop.source.splitlines()]
        assert step_selects.puts(lines) == lines
    assert "_put(w0[:, _o:_o + " in bwd.source
    assert "gates written straight into the saved rows" in notes(a)[0]
    assert all("1 elementwise runs one pass each" in k for k in notes(a)), notes(a)


def test_lengths_remembered_across_chunks(rng):
    # (GRU: a FastLSTM with lengths= does not split, "another kernel than the full body's")
    make, step, n = CELLS["gru"]
    a, b = model(make, True), model(make, False)
    before = counts()
    x, g = remembered_chunks(a, b, step, n, H, rng)
    assert counts()[0] > before[0], (counts(), before, notes(a))
    a.forget()
    b.forget()
    equal(train(a, x[:4], g[:4]), train(b, x[:4], g[:4]))


@pytest.mark.parametrize("name", ["fastlstm", "gru"])
def test_need_grad_input_false(name, rng):
    make = CELLS[name][0]
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    a, b = model(make, True), model(make, False)
    before = counts()
    for _ in range(3):
        got = train(a, x, g, need_grad_input=False)
        assert got[1] is None
        equal(got, train(b, x, g, need_grad_input=False))
    assert counts()[0] > before[0]


def test_feature_major_layout_stays_right(rng):
    make, step, n = CELLS["fastlstm"]
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    a, b = model(make, True, layout="feature"), model(make, False, layout="feature")
    for _ in range(3):
        got = train(a, x, g)
        equal(got, train(b, x, g))
    p = {k: v.data.copy() for k, v in a.module.named_parameters().items()}
    zero = tuple(np.zeros((16, H)) for _ in range(n))
    np.testing.assert_allclose(got[0], steps(step, p, x, zero)[0], **TOL)


@pytest.mark.parametrize("reverse", [False, True])
def test_user_scan_cell_against_the_interpreter(reverse):
    """A user's tn.scan LSTM body (its gates sliced from one product; h', c' as ys): the
    gradient graph compiled with step_direct on = off bit for bit = the reference interpreter
    at 1e-12, with passes run."""
    from scan_bodies import lstm_arrays, lstm_body

    from tapernn.interpret import interpret

    rng = np.random.default_rng(7)
    B = 17
    arrays = lstm_arrays(rng, 4, B, D, H)

    def loss(*v):
        r = tn.scan(lstm_body(B, D, H), v[:2], v[2:3], v[3:], reverse=reverse)
        return tn.sum(r.ys[0] * r.ys[0]) + tn.sum(tn.tanh(r.carries[1]) * r.carries[0])

    graph = tn.grad(tn.trace(loss, *arrays))
    want = interpret(graph, *arrays)
    got = {}
    for direct in (True, False):
        options = tn.PlanOptions(
            batch_split="on", layout="batch", own_threads="on", step_direct=direct
        )
        compiled = tn.compile(graph, options=options, backend="numba")
        before = counts()
        for _ in range(3):
            got[direct] = [np.array(a) for a in compiled(*arrays)]
        assert (counts()[0] > before[0]) == direct
    for a, b, c in zip(got[True], got[False], want):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, **TOL)


def test_a_pass_whose_loads_overlap_its_stores_is_refused(rng):
    """step_fuse.overlaps: a pass's load of the very block it stores is sound, one shifted by
    a column is not (the element would be read after another column's store)."""
    y = np.zeros((3, 16, 1024))
    x_same, x_shift = y, y[:, :, 1:]
    checks = [(-1, [(0, 256, [("xs", 0, 0)])])]
    assert step_fuse.overlaps(checks, ((), (x_same,), (), (y,)), 0, 16, 3, False) == set()
    hit = step_fuse.overlaps(checks, ((), (x_shift,), (), (y,)), 0, 16, 3, False)
    assert hit == {(-1, 0)}
    other = [(-1, [(0, 256, [("xs", 0, 256)])])]  # (another block of the same rows: disjoint)
    assert step_fuse.overlaps(other, ((), (x_same,), (), (y,)), 0, 16, 3, False) == set()


def _rows_in(buf, offset, shape, strides):
    item = buf.itemsize
    return np.lib.stride_tricks.as_strided(buf[offset:], shape, [v * item for v in strides])


def test_overlaps_against_shares_memory(rng):
    """step_fuse.overlaps (its row addresses from each array's, read once a call and shared by
    both halves' checks) against np.shares_memory of the very rows it compares: an xs's row t
    and a carry's rows with the ys row t's columns o:o + n, for xs, carries and ys laid at
    random offsets in one buffer (rows lo:hi of both halves, one past the arrays' end too)."""
    buf = np.zeros(1 << 14, np.float32)
    for _ in range(300):
        batch, length, width = int(rng.integers(2, 7)), int(rng.integers(1, 4)), 8
        row = int(rng.integers(width, 2 * width))  # (a row stride of >= its columns)
        step = row * batch + int(rng.integers(0, 5))
        at = [int(v) for v in rng.integers(0, 800, 3)]
        y = _rows_in(buf, at[0], (length, batch, width), (step, row, 1))
        x = _rows_in(buf, at[1], (length, batch, width - 2), (step, row, 1))
        c = _rows_in(buf, at[2], (batch, width), (row, 1))
        o, n = int(rng.integers(0, width - 1)), 2
        checks = [(0, [(o, n, [("xs", 0)]), (o, n, [("carry", 0)])])]
        whole = ((c,), (x,), (), (y,))
        reverse = bool(rng.integers(0, 2))
        t = length - 1 if reverse else 0
        shared: dict = {}  # (one call's addresses: both halves')
        for lo, hi in ((0, batch // 2), (batch // 2, batch), (batch - 1, batch + 2)):
            got = step_fuse.overlaps(checks, whole, lo, hi, length, reverse, shared)
            cols = y[t, lo:hi, o : o + n]
            want = np.shares_memory(x[t, lo:hi], cols) or np.shares_memory(c[lo:hi], cols)
            assert got == ({(0, o)} if want else set()), (batch, length, row, step, at, o, lo)


def test_off_by_option(rng):
    make = CELLS["fastlstm"][0]
    x, g = rng.standard_normal((T, 16, D)), rng.standard_normal((T, 16, H))
    b = model(make, False)
    before = counts()
    for _ in range(3):
        train(b, x, g)
    after = counts()
    assert after[:2] == before[:2] and after[2] > before[2]
    assert not any("one pass" in k or "straight into" in k for k in notes(b))


def test_a_run_stops_where_rows_would_interleave_wrongly():
    """step_pass._fits: an op reading a block the run wrote at another column offset, writing
    what an earlier op read whole (a broadcast row), or reading whole what was written, ends
    the run; the same blocks at the same offsets join it."""
    row = {0: "i0"}
    add = lambda out, ins: ("v", "o", [], (row, [], "v0"), out, ins, None)
    a = add(("b", 0, 512), [("a", 0, 512)])
    same = add(("c", 0, 256), [("b", 256, 256)])
    shifted = add(("c", 0, 256), [("b", 128, 256)])
    bcast = ("v", "o", [], ({0: "0"}, [], "v0"), ("c", 0, 256), [("d", 0, 256)], None)
    writes_d = add(("d", 0, 256), [("a", 0, 256)])
    reads_b_whole = ("v", "o", [], ({}, [], "v0"), ("c", 0, 256), ["b"], None)
    notes = [a]
    assert step_pass._fits([0], notes, same)
    assert not step_pass._fits([0], notes, shifted)
    assert not step_pass._fits([0], notes, reads_b_whole)
    assert step_pass._fits([0], [bcast], a)
    assert not step_pass._fits([0], [bcast], writes_d)


def kinds(args):
    """Each array argument's layout as numba types it ("C", "F" or "A"; tuples item by item)."""
    return [
        kinds(v)
        if isinstance(v, tuple)
        else ("C" if v.flags.c_contiguous else "F" if v.flags.f_contiguous else "A")
        if isinstance(v, np.ndarray)
        else None
        for v in args
    ]


def alike(v, kind):
    """A copy of `v` of layout `kind` (kinds()); "A": each row contiguous, one item of padding
    after it."""
    if isinstance(kind, list):
        return tuple(alike(u, k) for u, k in zip(v, kind))
    if kind != "A":
        return np.array(v, order=kind) if kind else v
    out = np.full((*v.shape[:-1], v.shape[-1] + 1), np.nan, v.dtype)[..., :-1]
    out[...] = v
    return out


@pytest.mark.parametrize("cell", ["fastlstm", "gru"])
def test_rows_of_any_stride_run_the_passes_strided_twin(rng, monkeypatch, cell):
    """A step loop's pass reads C-contiguous rows (c_row). The loop's own xs, invariants and ys
    rows are checked before each call (step_fuse.strided), so no loop compiles the pass's twin
    (`_pass<k>s`: the same scalar lines over strided rows) -- before, every backward loop did,
    its saved rows being layout "A" to numba (BENCHMARKS.md "hcoldB") -- and a call with
    strided rows runs the Python halves. The translation with "strided" kept (a first call's
    strided rows: Halves.choose) compiles the twin: the FastLSTM's and the GRU's forward and
    backward step loops so made, called on copies of their arguments whose carries, xs and ys
    rows have stride 2, give the same bits as the loops that ran, on copies of the layouts
    they ran with (their compiled types; final carries and every ys written). No kernel call
    is left in either: GRU's lone gate kernels are one-op passes (step_pass._kernel_call)."""
    import copy
    import sys
    import types

    seen, call = [], step_loop.StepLoop.__call__
    monkeypatch.setattr(
        step_loop.StepLoop,
        "__call__",
        lambda self, *args: (
            seen.append((self, copy.deepcopy(args), kinds(args))),
            call(self, *args),
        )[1],
    )
    chosen, choose = [], step_loop.Halves.choose
    monkeypatch.setattr(
        step_loop.Halves,
        "choose",
        lambda self, *args: chosen.append((self, args)) or choose(self, *args),
    )
    x, g = rng.standard_normal((T, 17, D)), rng.standard_normal((T, 17, H))
    a = model(CELLS[cell][0], True)
    for _ in range(3):
        train(a, x, g)
    loops = {bool(f.reverse): (f, args, was) for f, args, was in seen}
    assert len(loops) == 2 and all(f.passes and f.rows for f, _, _ in loops.values())
    for f, _, _ in loops.values():  # (no twin compiled: on main, the backward loop's were)
        module = sys.modules[f.kernel.py_func.__module__]
        assert [len(getattr(module, f"_pass{k}s").signatures) for k in range(f.passes)] == [
            0
        ] * f.passes

    def strided(v):  # (the same values, every row's items 2 apart)
        if not isinstance(v, np.ndarray) or v.ndim < 2:
            return copy.deepcopy(v)
        out = np.full((*v.shape[:-1], 2 * v.shape[-1]), np.nan, v.dtype)[..., ::2]
        out[...] = v
        return out

    halves, (runner, whole, hoisted, alias) = chosen[-1]  # (the backward loop's last call)
    report = types.SimpleNamespace(kernel="")
    fake = types.SimpleNamespace(rows=runner.rows, report=report, step_loops=halves)
    assert halves.choose(fake, whole, hoisted, alias) is not None  # (contiguous: numba)
    kind, k = halves.loops[0].rows[0]
    place = ("carry", "xs", "inv", "ys").index(kind)
    bent = tuple([strided(v) if j == k else v for j, v in enumerate(w)] for w in whole)
    bent = tuple(bent[i] if i == place else whole[i] for i in range(4))
    assert halves.choose(fake, bent, hoisted, alias) is None  # (strided rows: Python)
    assert "calls whose rows are strided run in Python" in report.kernel

    twins = {}  # (each loop's half translated with "strided" kept)
    for h in {id(h): h for h, _ in chosen}.values():
        twins.update(zip(map(id, h.loops), h.remake(frozenset({"strided"})).loops))
    for f, args, was in loops.values():
        # (theirs: copies of the layouts the loop was called with -- numba's types of its own
        # calls, no compile of their own (hcold8) -- rows contiguous: the pass, not its twin;
        # mine: stride 2, run by the "strided" translation of the same half)
        twin = twins[id(f)]
        assert not twin.rows and "s(" in twin.source and "_callee(" not in twin.source
        mine, theirs = [strided(v) for v in args], [alike(v, k) for v, k in zip(args, was)]
        assert kinds(theirs) == was
        assert any(isinstance(v, np.ndarray) and not v.flags.c_contiguous for v in mine)
        assert twin.prepare(twin.key(mine)), twin.error
        got, compiled = call(twin, *mine), len(f.kernel.signatures)
        want = call(f, *theirs)
        assert len(f.kernel.signatures) == compiled  # (the loop's own types: compiled before)
        for u, v in zip(list(got) + mine, list(want) + list(theirs)):
            if isinstance(u, np.ndarray):
                assert np.array_equal(u, v, equal_nan=True)
