"""PlanOptions.dz_in_gates for the peephole LSTM and GRU (issue 16, branch hpeak6): the reverse
loop's slab written over the forward's saved gate rows needs the two slabs to line up.

- Peephole LSTM: the peephole weights' sums sum_t sum_b dz_t * c_t leave the reverse loop at
  every size (push_out_grads "sum_mul"), so its slab is (final dh, dc | T rows of dZ), the size
  of the forward's (final h, c | T gate rows), not 3H longer (before, at B*H*itemsize > 16 KiB
  they stayed (H,) carries ahead of the rows and nothing was donated).
- GRU: its VJP redoes r_t * h_{t-1} from r_t and h_{t-1} (autodiff.redone_cheaply(products=))
  instead of keeping it as a fifth gate-row column read after the loop (the W_hn gradient), so
  the forward's rows are [r z n 1-z] (4H), all read by the reverse loop alone, and its rows
  [dZ (3H) | r*h (4th H)] line up with them; its 3H input projection is computed into the last
  3/4 of the forward's rows (ops.registry.rows_writable: a forward loop's operand rows may
  run ahead of its rows).

Equivalence in float64 at 1e-12: donation on vs off vs unroll=True (no scan code), outputs
against the NumPy equations, over remembered chunks, lengths=, need_grad_input=False, stacked
cells and a second backward; structure of the placement; the rows_writable rule itself.
Every model here runs batch-major (layout="batch"): the donation is the batch-major slabs'; under
"auto" the layout rule's measured choice, cached per machine (~/.cache/tapernn/layout-rule.json),
chose feature-major for the peephole LSTM on one machine and the donation test failed there."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import PlanOptions, nn
from tapernn.nn.runtime import runtime_of
from tapernn.ops.registry import rows_writable
from tapernn.scan_ir import scan_rows, scan_rows_of
from tapernn.scan_run import writable_over_xs
from tests import cell_reference as ref

# B*H*8 = 16,640 B: above the old 16 KiB limit under which the peephole sums already left the
# loop; B*4H above LOOP_MAX_SIZE, so the Python runner runs the loop on numba too (donated)
T, B, H = 4, 16, 130
CELLS = {
    "LSTM": lambda: nn.LSTM(H, H),
    "GRU": lambda: nn.GRU(H, H),
    "FastLSTM": lambda: nn.FastLSTM(H, H),
    "stacked": lambda: nn.Sequential(nn.LSTM(H, H), nn.GRU(H, H)),
}
STATES = (nn.LSTM, nn.FastLSTM, nn.GRU)


def _data(seed=0, t=T):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((t, B, H)), rng.standard_normal((t, B, H))


def _run(cell, options, unroll=False, chunks=1, lengths=False, grad_input=True):
    tn.manual_seed(3)
    seq = nn.Sequencer(CELLS[cell](), unroll=unroll)
    if chunks > 1:
        seq.remember("both")
    seq.set_plan_options(options)
    seq.zero_grad_parameters()
    outs = []
    for k in range(chunks):
        t = T - k
        x, g = _data(k, t)
        kw = {"lengths": np.array([t] * (B - 2) + [t - 1, 1])} if lengths else {}
        outs.append(np.array(seq.forward(x, **kw)))
        gx = seq.backward(x, g, need_grad_input=grad_input)
        outs += [np.array(gx)] if grad_input else []
        if chunks > 1:
            cells = [m for m in seq.modules() if isinstance(m, STATES)]
            outs += [np.array(s) for m in cells for s in m.get_hidden_state(t - 1)]
    return seq, outs + [p.grad.copy() for p in seq.parameters()]


def _pair(seq):
    return runtime_of(seq).history[-1].exe.compile_training()


def _same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_donated_equals_not_donated_and_unrolled(cell, backend):
    on = PlanOptions(layout="batch", backend=backend, dz_in_gates=True)
    off = PlanOptions(layout="batch", backend=backend, dz_in_gates=False)
    for chunks in (1, 3):
        seq, got = _run(cell, on, chunks=chunks)
        _same(got, _run(cell, off, chunks=chunks)[1])
        _same(got, _run(cell, off, unroll=True, chunks=chunks)[1])
        # (stacked: both cells' steps in one loop, its slab over both cells' gate rows)
        assert _pair(seq).backward.program.plan.donated


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_lengths_need_grad_input_false_and_remember(cell):
    on = PlanOptions(layout="batch", backend="numpy", dz_in_gates=True)
    off = PlanOptions(layout="batch", backend="numpy", dz_in_gates=False)
    for kw in ({"lengths": True}, {"grad_input": False}, {"lengths": True, "chunks": 3}):
        seq, got = _run(cell, on, **kw)
        _same(got, _run(cell, off, **kw)[1])
        _same(got, _run(cell, off, unroll=True, **kw)[1])
        if not kw.get("lengths"):  # (lengths=: masked rows, not donated, as for FastLSTM)
            assert _pair(seq).last_backward.program.plan.donated


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_outputs_equal_the_numpy_equations_across_backwards(cell):
    """Two forward/backward rounds (the second forward after a backward that wrote its dZ over
    the first's gate rows), then a second backward of one forward (the runtime re-runs it)."""
    x, g = _data()
    m = CELLS[cell]()
    step, n = (ref.lstm_step, 2) if cell == "LSTM" else (ref.gru_step, 1)
    want = ref.run(step, {k: p.data.copy() for k, p in m.named_parameters().items()}, x, n, H)
    seq = nn.Sequencer(m).set_plan_options(
        PlanOptions(layout="batch", backend="numpy", dz_in_gates=True)
    )
    seq.zero_grad_parameters()
    for _ in range(2):
        np.testing.assert_allclose(seq.forward(x), want[0], rtol=1e-12, atol=1e-12)
        gx1 = np.array(seq.backward(x, g))
    assert _pair(seq).backward.program.plan.donated
    once = [p.grad.copy() / 2 for p in seq.parameters()]
    gx2 = np.array(seq.backward(x, g))
    np.testing.assert_allclose(gx2, gx1, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.array(seq.output), want[0], rtol=1e-12, atol=1e-12)
    for p, o in zip(seq.parameters(), once):
        np.testing.assert_allclose(p.grad, 3 * o, rtol=1e-12, atol=1e-12)


def _loops(graph):
    return [n for n in graph.nodes if n.op == "scan"]


def test_the_peephole_lstm_reverse_loop_carries_no_sums():
    """Its reverse loop carries dh and dc only (the peephole sums are sums of products of
    stacks after it: sum_mul, hpeep), so its slab is the size of the forward's carries and gate
    rows: donated."""
    seq, _ = _run("LSTM", PlanOptions(layout="batch", backend="numpy"))
    pair = _pair(seq)
    (back,) = _loops(pair.backward.graph)
    assert back.attrs["n_carry"] == 2
    assert [o.shape for o in back.attrs["body"].outputs[:2]] == [(B, H), (B, H)]
    after = [n for n in pair.backward.graph.nodes if n.op == "sum_mul" and n.inputs[0].ndim >= 3]
    assert after, "the peephole sums of products of stacks after the loop"
    (fwd,) = _loops(pair.forward.graph)
    _, start, row, length = scan_rows(fwd)
    assert back.size == start + length * row
    assert back in pair.backward.program.plan.donated


def test_gru_rows_line_up_and_its_projection_is_in_their_last_three_quarters():
    seq, _ = _run("GRU", PlanOptions(layout="batch", backend="numpy"))
    pair = _pair(seq)
    (fwd,) = _loops(pair.forward.graph)
    (back,) = _loops(pair.backward.graph)
    _, start, row, length = scan_rows(fwd)
    _, bstart, brow, _ = scan_rows(back)
    assert (start, row) == (bstart, brow) == (B * H, 4 * B * H)  # [r z n 1-z] | [dZ r*h]
    assert back in pair.backward.program.plan.donated
    # r*h_{t-1} is redone per step in the reverse loop, not kept by the forward
    body = fwd.attrs["body"]
    assert sum(int(np.prod(o.shape)) for o in body.outputs[fwd.attrs["n_carry"] :]) == 5 * B * H
    # (h_t, shifted into its own block, and the 4H gate block)
    fplan = pair.forward.program.plan
    ((m, (_, steps)),) = [(q, v) for q, v in fplan.placed.items() if v[0] is fwd]
    assert m.op == "matmul" and m.size == length * 3 * B * H
    # (hwin: a strided window over the last 3H columns of each batch row of the gate block)
    assert steps[:3] == (
        ("getitem", (slice(start, start + length * row),)),
        ("reshape", (length * B, 4 * H)),
        ("getitem", (slice(None), slice(-3 * H, None))),
    )
    assert fwd in fplan.slab_roots
    assert not any(size >= m.size for size, _ in fplan.buffers)


def test_gru_runners_write_over_their_xs_directly():
    """The forward's projection rows run ahead of its rows, the reverse loop's gate rows lie
    in its own rows: both runners' checks pass every call (no slab of their own)."""
    seq, _ = _run("GRU", PlanOptions(layout="batch", backend="numpy"))
    pair = _pair(seq)
    seen = {}
    patched = []
    for name, prog in (("fwd", pair.forward.program), ("bwd", pair.backward.program)):
        runner = next(v for v in prog.fn.__kwdefaults__.values() if hasattr(v, "source"))
        over = runner.bound["_over"]
        patched.append((runner, over))

        def spy(*a, _over=over, _name=name):
            seen.setdefault(_name, []).append(_over(*a))
            return seen[_name][-1]

        runner.bound["_over"] = spy
    try:
        x, g = _data()
        seq.forward(x)
        seq.backward(x, g)
    finally:
        for runner, over in patched:
            runner.bound["_over"] = over
    assert seen == {"fwd": [True], "bwd": [True]}


def test_rows_writable():
    """Row t of an operand vs the loop's rows (start 10, rows of 4, 3 steps)."""
    rows = (10, 4, 3)
    inside = ([10, 14, 18], [14, 18, 22])
    ahead = ([13, 16, 19], [16, 19, 22])  # 3 wide, each at or past its row's start
    behind = ([10, 13, 16], [13, 16, 19])  # 3 wide, each ending by its row's end
    for (lo, end), fwd_ok, rev_ok in (
        (inside, True, True),
        (ahead, True, False),
        (behind, False, True),
    ):
        assert rows_writable(lo, end, [0, 1, 2], *rows, reverse=False) == fwd_ok
        assert rows_writable(lo, end, [0, 1, 2], *rows, reverse=True) == rev_ok
    assert not rows_writable([22], [23], [2], *rows, reverse=False)  # past the rows
    assert rows_writable([5], [8], [0], *rows, reverse=True)  # below: the carries, written last
    assert not rows_writable([5], [8], [0], *rows, reverse=False)
    assert not rows_writable([], [], [], *rows, reverse=False)


@pytest.mark.parametrize("reverse", [False, True])
def test_the_runner_refuses_rows_the_loop_would_overwrite_first(reverse):
    """writable_over_xs on real arrays: a (3, 3) operand in a slab of 4-wide rows at the rows'
    start (behind) or end (ahead): accepted in the order that reads each row before any write
    reaches it, refused in the other."""
    body = tn.trace(
        lambda c, x: (c + x.sum(), tn.functional.concat([x, x[:1]])), np.zeros(()), np.zeros(3)
    )
    attrs = {"body": body, "n_carry": 1, "n_xs": 1, "length": 3, "reverse": reverse}
    assert scan_rows_of(attrs) == (range(1, 2), 1, 4, 3)
    over = writable_over_xs(attrs, np.dtype(np.float64), True)
    slab = np.zeros(1 + 3 * 4)
    behind = slab[1:10].reshape(3, 3)
    ahead = slab[4:13].reshape(3, 3)
    assert over(slab, behind) == reverse
    assert over(slab, ahead) == (not reverse)
    assert over(slab, slab[1:13].reshape(3, 4)[:, :3])  # row t inside row t: both
    assert not writable_over_xs(attrs, np.dtype(np.float64), False)(slab, ahead)


def _narrow_program(Ts, Bs, D):
    """tn.scan over a GEMM's (T*B, 3) result with ys rows of (B, 4): the GEMM fits the rows
    only at their end (each of its rows at or past the loop's row of its step)."""

    def step(h, x, M):
        y = tn.concat([tn.tanh(x + h[:, :3]), h[:, 3:] * 0.5 + M], axis=1)
        return [h + y, y]

    body = tn.trace(step, np.zeros((Bs, 4)), np.zeros((Bs, 3)), np.zeros((Bs, 1)))

    def f(x, W, h0, M):
        xs = tn.reshape(tn.reshape(x, (Ts * Bs, D)) @ W, (Ts, Bs, 3))
        s = tn.scan(body, [h0], [xs], [M])
        return [s.ys[0], s.carries[0]]

    rng = np.random.default_rng(5)
    arrays = [
        rng.standard_normal((Ts, Bs, D)),
        rng.standard_normal((D, 3)),
        rng.standard_normal((Bs, 4)),
        rng.standard_normal((Bs, 1)),
    ]
    return tn.trace(f, *arrays), arrays


def test_a_narrow_input_at_the_rows_end_equals_the_interpreter_and_needs_the_rule(monkeypatch):
    """Without the strided window (regions._batch_rows None: rows that are no batch rows) the
    planner places the narrower GEMM at the rows' end and the loop equals the reference
    interpreter. With the planner's rule forced to accept anything it places it at the rows'
    start (step t's row write reaches row t + 1 of the GEMM): the runner's own check still
    refuses it (a slab of its own: right); with the runner's forced too, the numbers are wrong."""
    from tapernn import regions
    from tapernn import scan_xs as run_mod
    from tapernn.interpret import interpret

    g, arrays = _narrow_program(6, 3, 5)
    want = interpret(g, *arrays)
    options = PlanOptions(layout="batch", backend="numpy")
    monkeypatch.setattr(regions, "_batch_rows", lambda s: None)
    compiled = tn.compile(g, options=options)
    plan = compiled.program.plan
    ((m, (_, steps)),) = plan.placed.items()
    (loop,) = plan.slab_roots
    _, start, row, length = scan_rows(loop)
    assert m.op == "matmul" and steps[0][1][0].start == start + length * row - m.size
    for got, w in zip(compiled(*arrays), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(regions, "rows_writable", lambda *a, **k: True)
    head = tn.compile(g, options=options)
    ((_, (_, steps)),) = head.program.plan.placed.items()
    assert steps[0][1][0].start == start  # (the first offset tried)
    for got, w in zip(head(*arrays), want):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(run_mod, "rows_writable", lambda *a, **k: True)
    wrong = tn.compile(g, options=options)(*arrays)
    assert not np.allclose(wrong[0], want[0])


@pytest.mark.parametrize("Ts, Bs", [(6, 3), (2, 1), (4, 8)])
def test_a_narrow_input_as_a_window_of_the_rows_equals_the_interpreter(Ts, Bs):
    """The loop's rows one (B, 4) ys: the (T*B, 3) GEMM goes into the last 3 columns of each
    batch row (a strided window, ld 4: regions._candidates), written by np.matmul's `out=`,
    and the loop equals the reference interpreter."""
    from tapernn.interpret import interpret

    g, arrays = _narrow_program(Ts, Bs, 5)
    want = interpret(g, *arrays)
    compiled = tn.compile(g, options=PlanOptions(layout="batch", backend="numpy"))
    plan = compiled.program.plan
    ((m, (_, steps)),) = plan.placed.items()
    (loop,) = plan.slab_roots
    length = scan_rows(loop)[3]
    assert m.op == "matmul" and steps[1:3] == (
        ("reshape", (length * Bs, 4)),
        ("getitem", (slice(None), slice(-3, None))),
    )
    for _ in range(2):
        for got, w in zip(compiled(*arrays), want):
            np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
