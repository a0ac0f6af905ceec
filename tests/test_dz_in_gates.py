"""PlanOptions.dz_in_gates (issue 16): a TrainingPair's backward writes its reverse loop's slab
(final dh, dc | the T rows of dZ) over the prefix of the forward's saved slab (final h, c | the
T gate rows), a donated input (donate.py), instead of a buffer of its own. Structure (the
loop computed into the input, the arena without its slab, no donation when another forward
output or a later read reaches the prefix) and equivalence: values and gradients equal with
the donation on and off, to unroll=True and to NumPy equations, in float64 at 1e-12, on both
backends; remember across chunks (the final states read from their shifted blocks), lengths=,
mask_zero, stacked cells, need_grad_input=False, a second backward of one forward."""

import sys

import numpy as np
import pytest

import tapernn as tn
from tapernn import PlanOptions, nn, scan_run
from tapernn.donate import donatable, donations
from tapernn.graph import Graph, Node
from tapernn.memory import plan_buffers
from tapernn.nn.runtime import runtime_of
from tests import cell_reference as ref

H, T, B = 8, 6, 3
CELLS = {
    "FastLSTM": lambda: nn.FastLSTM(H, H),
    "LSTM": lambda: nn.LSTM(H, H),
    "LSTM(peephole=False)": lambda: nn.LSTM(H, H, peephole=False),
    "GRU": lambda: nn.GRU(H, H),
    "stacked": lambda: nn.Sequential(nn.FastLSTM(H, H), nn.LSTM(H, H)),
    "masked": lambda: nn.FastLSTM(H, H).mask_zero(),
}
# the unrolled reference runs on NumPy for both backends: unroll=True on numba compiles ~10
# fused-group kernels per case (minutes of a cold kernel cache in CI), and numba's unrolled
# programs are checked against NumPy elsewhere (tests/test_backends.py, test_cells.py)
UNROLLED_REF = PlanOptions(backend="numpy", dz_in_gates=False)
DONATING = ["FastLSTM", "LSTM", "LSTM(peephole=False)", "GRU"]


def _data(seed=0, t=T):
    rng = np.random.default_rng(seed)
    x, g = rng.standard_normal((t, B, H)), rng.standard_normal((t, B, H))
    x[t - 2 :, 1] = 0  # (a padded tail for mask_zero)
    return x, g


def _run(cell, options, unroll=False, chunks=1, lengths=False, grad_input=True):
    """Outputs, input gradients, final states and parameter gradients of one Sequencer over
    `chunks` forward/backward calls (remember="both" when chunks > 1)."""
    tn.manual_seed(7)
    seq = nn.Sequencer(CELLS[cell](), unroll=unroll)
    if chunks > 1:
        seq.remember("both")
    seq.set_plan_options(options)
    seq.zero_grad_parameters()
    outs = []
    for k in range(chunks):
        # (chunks of different lengths, T, T - 1, T: a shorter chunk, then a longer one; on
        # numba each length is one more pair of whole-program kernels to compile)
        t = T - k % 2
        x, g = _data(k, t)
        kw = {"lengths": np.array([t, t - 2, 1])} if lengths else {}
        outs.append(np.array(seq.forward(x, **kw)))
        gx = seq.backward(x, g, need_grad_input=grad_input)
        outs += [np.array(gx)] if grad_input else []
        if chunks > 1:  # (the final states the next chunk starts from; per cell if stacked)
            cells = [m for m in seq.modules() if isinstance(m, (nn.FastLSTM, nn.LSTM))]
            cells = cells if cell == "stacked" else [seq]
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
def test_values_and_gradients_with_and_without_the_donation(cell, backend):
    on = PlanOptions(backend=backend, dz_in_gates=True)
    off = PlanOptions(backend=backend, dz_in_gates=False)
    for chunks in (1, 3):  # (3: the state remembered across chunks)
        seq, got = _run(cell, on, chunks=chunks)
        _, plain = _run(cell, off, chunks=chunks)
        _, unrolled = _run(cell, UNROLLED_REF, unroll=True, chunks=chunks)
        _same(got, plain)
        _same(got, unrolled)
        donated = _pair(seq).backward.program.plan.donated
        if cell != "masked":  # (mask_zero's loop: not donated today, see the notes)
            assert donated  # (numba's loop kernels write over the donated rows too)


# (lengths= and need_grad_input=False: tests/test_dz_in_gates_lengths.py)


def test_fastlstm_and_lstm_equal_the_numpy_equations():
    x, g = _data()
    x = x.copy()
    for cell, step in (("FastLSTM", ref.fastlstm_step), ("LSTM", ref.lstm_step)):
        m = CELLS[cell]()
        want = ref.run(step, {k: p.data.copy() for k, p in m.named_parameters().items()}, x, 2, H)
        seq = nn.Sequencer(m).set_plan_options(PlanOptions(backend="numpy", dz_in_gates=True))
        for _ in range(2):  # (the second forward after a backward that overwrote the gates)
            np.testing.assert_allclose(seq.forward(x), want[0], rtol=1e-12, atol=1e-12)
            seq.backward(x, g)
        assert _pair(seq).backward.program.plan.donated


@pytest.mark.parametrize("cell", DONATING)
def test_the_reverse_loop_is_computed_into_the_saved_slab(cell, monkeypatch):
    """Structure: the backward's loop is computed into the leading elements of the saved
    forward slab (an input of the backward), has no buffer, its runner checks its rows; the
    forward's other outputs (final states, output, saved blocks) all lie past that prefix;
    the pair's arena is smaller by about the loop's slab (the late xs copied row by row: the
    whole-block copies of small ones trade their bytes for time, test_late_xs_blocks)."""
    monkeypatch.setattr(scan_run, "LATE_BLOCK_BYTES", 0)
    seq, _ = _run(cell, PlanOptions(backend="numpy", dz_in_gates=True))
    pair = _pair(seq)
    fwd, bwd = pair.forward, pair.backward
    plan = bwd.program.plan
    ((loop, inp),) = plan.donated.items()
    assert loop.op == "scan" and loop.attrs["reverse"] and inp.op == "input"
    j = bwd.graph.inputs.index(inp)
    saved = fwd.graph.outputs[len(fwd.graph.outputs) - pair.n_saved + j]
    states = 1 if cell == "GRU" else 2  # (final dh, dc | rows of dZ; GRU: dh | [dZ r*h])
    assert saved.op == "scan" and loop.size == states * B * H + T * B * 4 * H < saved.size
    assert loop not in plan.buffer_of and loop not in plan.fresh
    assert f"a{j}[:{loop.size}]" in bwd.program.source
    runner = next(v for v in bwd.program.fn.__kwdefaults__.values() if hasattr(v, "source"))
    assert "_over(out, " in runner.source
    limit = donatable(fwd.graph, fwd.program.plan, pair.n_saved)[j]
    assert limit >= loop.size
    # the final states the next chunk starts from are views past the prefix
    fplan = fwd.program.plan
    views = [o for o in fwd.graph.outputs if o is not saved and fplan.storage.get(o) is saved]
    assert len(views) >= 1 + states
    plain = _pair(_run(cell, PlanOptions(backend="numpy", dz_in_gates=False))[0])
    assert any(size == loop.size for size, _ in plain.backward.program.plan.buffers)
    assert not any(size == loop.size for size, _ in plan.buffers)
    # (less the runner's private copies of a step's xs rows, a body reading them late: the
    # arena counts them, scan_run._workspace_bytes)
    private = sum(r.workspace_bytes for r in bwd.report.loops)
    if cell == "GRU":  # (here the forward's buffers set the arena: smaller, not by the slab)
        assert pair.arena.nbytes < plain.arena.nbytes
    else:
        assert pair.arena.nbytes + loop.nbytes - 2 * B * H * 8 - private <= plain.arena.nbytes


def test_no_donation_when_the_prefix_is_read_by_another_output_or_later():
    """donations(): an input whose leading elements another forward output reads (the limit
    below the loop's size), or a backward read after the loop, is not donated (fall back)."""
    seq, _ = _run("FastLSTM", PlanOptions(backend="numpy", dz_in_gates=True))
    pair = _pair(seq)
    bwd = pair.backward
    ((loop, inp),) = bwd.program.plan.donated.items()
    j = bwd.graph.inputs.index(inp)
    g, root = bwd.graph, bwd.program.plan.root
    assert donations(g, root, {j: loop.size}) == {loop: inp}
    assert donations(g, root, {j: loop.size - 1}) == {}
    assert donations(g, root, {j: 0}) == {}
    assert not plan_buffers(
        g, options=PlanOptions(backend="numpy", dz_in_gates=True), donate={j: 1}
    ).donated
    # a read of the prefix after the loop (exp of its first element) stops the donation; one of
    # the elements past it does not
    for at, donated in ((0, False), (loop.size, True)):
        view = Node("getitem", [inp], {"index": (("s", at, at + 1, None),)}, (1,), inp.dtype)
        late = Node("exp", [view], None, (1,), inp.dtype)
        g2 = Graph(list(g.nodes) + [view, late], g.inputs, list(g.outputs) + [late], g.meta)
        assert bool(donations(g2, {**root, view: inp, late: late}, {j: loop.size})) == donated


def test_a_second_backward_of_one_forward_gives_the_same_gradients():
    """The backward overwrites the saved gates: the runtime re-runs the forward before a
    second backward of the same forward (record.saved is consumed by every backward)."""
    x, g = _data()
    seq = nn.Sequencer(nn.FastLSTM(H, H)).set_plan_options(
        PlanOptions(backend="numpy", dz_in_gates=True)
    )
    seq.zero_grad_parameters()
    y = np.array(seq.forward(x))
    gx1 = np.array(seq.backward(x, g))
    once = [p.grad.copy() for p in seq.parameters()]
    gx2 = np.array(seq.backward(x, g))
    assert _pair(seq).backward.program.plan.donated
    np.testing.assert_allclose(gx2, gx1, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.array(seq.output), y, rtol=0, atol=0)
    for p, o in zip(seq.parameters(), once):
        np.testing.assert_allclose(p.grad, 2 * o, rtol=1e-12, atol=1e-14)


def test_the_runner_writes_over_the_gates_directly_and_checks_the_rows():
    """The backward loop's runner is handed the saved slab's prefix and writes it directly
    (its row check passes every call); an xs view shifted by one element is refused by the
    planner's own check (donate._rows_aligned), as the runner would refuse it."""
    from tapernn import donate

    seq, _ = _run("FastLSTM", PlanOptions(backend="numpy"))
    bwd = _pair(seq).backward
    ((loop, inp),) = bwd.program.plan.donated.items()
    runner = next(v for v in bwd.program.fn.__kwdefaults__.values() if hasattr(v, "source"))
    seen = []
    over = runner.bound["_over"]
    runner.bound["_over"] = lambda *a: seen.append(over(*a)) or seen[-1]
    try:
        x, g = _data()
        seq.forward(x)
        seq.backward(x, g)
    finally:
        runner.bound["_over"] = over
    assert seen == [True]
    nc, nx = loop.attrs["n_carry"], loop.attrs["n_xs"]
    root = bwd.program.plan.root
    xs = [v for v in loop.inputs[nc : nc + nx] if root.get(v) is inp]
    assert xs and all(donate._rows_aligned(v, inp, loop) for v in xs)
    n = T * B * 4 * H
    start = 2 * B * H
    for at, ok in ((start, True), (start + 1, False), (start + 4 * B * H, False)):
        flat = Node("getitem", [inp], {"index": (("s", at, at + n, None),)}, (n,), inp.dtype)
        rows = Node("reshape", [flat], {"shape": (T, B, 4 * H)}, (T, B, 4 * H), inp.dtype)
        assert donate._rows_aligned(rows, inp, loop) == ok


def test_no_donation_when_a_kept_forward_output_lies_in_the_prefix():
    """donatable(): a forward output (kept or saved) that is a view of the saved slab's
    prefix (here: the final h as the slab's carry section, as before the final carries were
    read from their shifted blocks) limits the donatable prefix to before it: no donation."""
    from types import SimpleNamespace

    seq, _ = _run("FastLSTM", PlanOptions(backend="numpy"))
    pair = _pair(seq)
    fwd, bwd = pair.forward, pair.backward
    g, plan = fwd.graph, fwd.program.plan
    ((loop, inp),) = bwd.program.plan.donated.items()
    j = bwd.graph.inputs.index(inp)
    first = len(g.outputs) - pair.n_saved
    slab = g.outputs[first + j]
    assert donatable(g, plan, pair.n_saved)[j] >= loop.size
    for at, limit in ((0, 0), (B * H, B * H), (loop.size, loop.size)):
        view = Node(
            "getitem", [slab], {"index": (("s", at, at + B * H, None),)}, (B * H,), slab.dtype
        )
        outs = list(g.outputs[:first]) + [view] + list(g.outputs[first:])
        g2 = Graph(list(g.nodes) + [view], g.inputs, outs, g.meta)
        p2 = SimpleNamespace(storage={**plan.storage, view: slab}, fresh=plan.fresh)
        got = donatable(g2, p2, pair.n_saved)[j]
        assert got == limit
        assert bool(donations(bwd.graph, bwd.program.plan.root, {j: got})) == (got >= loop.size)


@pytest.mark.parametrize("backend", ["numba", "auto"])
def test_on_numba_small_and_large_loops_are_donated(backend, monkeypatch):
    """The numba loop kernel's runner writes over a donated input as the Python runner does
    (numba_loop.kernel_runner: the same row check), so small loops are donated on numba and
    "auto" too, and so is a loop too large for the kernel; the same numbers without."""
    from tapernn.backends import LOOP_MAX_SIZE

    on = PlanOptions(backend=backend, dz_in_gates=True)
    off = PlanOptions(backend=backend, dz_in_gates=False)
    seq, got = _run("FastLSTM", on)
    assert _pair(seq).backward.program.plan.donated
    _same(got, _run("FastLSTM", off)[1])
    big = LOOP_MAX_SIZE // (4 * B) + 1
    monkeypatch.setattr(sys.modules[__name__], "H", big)
    seq, got = _run("FastLSTM", on)
    assert _pair(seq).backward.program.plan.donated
    _same(got, _run("FastLSTM", off)[1])


@pytest.mark.parametrize("cell", ["FastLSTM", "LSTM"])
def test_the_need_grad_input_false_variant_is_donated_too(cell):
    """backward(..., need_grad_input=False)'s variant program (same inputs as the pair's
    backward) computes its loop into the saved slab too: no buffer of the loop's size in the
    module's arena, and the same gradients."""
    on = PlanOptions(backend="numpy", dz_in_gates=True)
    seq, got = _run(cell, on, grad_input=False)
    pair = _pair(seq)
    variant = pair.last_backward
    assert variant is not pair.backward
    ((loop, _),) = variant.program.plan.donated.items()
    assert not any(size == loop.size for size, _ in variant.program.plan.buffers)
    _same(got, _run(cell, PlanOptions(backend="numpy", dz_in_gates=False), grad_input=False)[1])
