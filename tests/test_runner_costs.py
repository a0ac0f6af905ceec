"""What the NumPy loop runner (scan_run.make_runner) does per call and per step, made cheaper
for small loops (issue 16's (1, 5, 5) rolled step), each against the NumPy equations
(complex-step gradients) at 1e-12, float64, across new lengths, batch sizes, dtypes, replaced
weights and remembered chunks:
- late xs: a loop body that reads some xs after writing its ys rows over them
  (PlanOptions.dz_in_gates: the dZ rows over the forward's saved gate rows) reads copies of
  them; small ones (scan_run.LATE_BLOCK_BYTES in all) are copied whole once per loop call into
  blocks the runner holds (counted in the report's workspace bytes), larger ones row by row;
- a reverse loop's computed carries alternate between two arrays the runner holds;
- xs the inlined body never reads are not split into rows."""

import re

import numpy as np
import pytest
from cell_reference import complex_step_grads, fastlstm_step, gru_step, lstm_step, run

import tapernn as tn
from tapernn import PlanOptions, nn, scan_run
from tapernn.nn.runtime import runtime_of

H = 5
CELLS = {
    "FastLSTM": (lambda: nn.FastLSTM(H, H), fastlstm_step, 2),
    "LSTM": (lambda: nn.LSTM(H, H), lstm_step, 2),
    "GRU": (lambda: nn.GRU(H, H), gru_step, 1),
}
NUMPY = PlanOptions(backend="numpy")


def _params(m):
    return {k: p.data.copy() for k, p in m.named_parameters().items()}


def _runner(seq):
    """The backward loop's runner of the last call's training pair."""
    pair = runtime_of(seq).history[-1].exe.compile_training()
    bwd = pair.last_backward or pair.backward
    (runner,) = [v for v in bwd.program.fn.__kwdefaults__.values() if hasattr(v, "source")]
    return runner, bwd


def check_step(seq, cell, step, n_states, T, B, seed, dtype=np.float64, rtol=1e-12):
    """One forward+backward of `seq` equals the equations: values, input and parameter
    gradients (complex steps)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    params = {k: v.astype(np.float64) for k, v in _params(cell).items()}
    want, _ = run(step, params, x.astype(np.float64), n_states, H)
    seq.zero_grad_parameters()
    y = seq.forward(x)
    gx = seq.backward(x, g)
    atol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, want, rtol=rtol, atol=atol)
    exact = complex_step_grads(step, params, x.astype(np.float64), n_states, H, g)
    np.testing.assert_allclose(gx, exact["input"], rtol=rtol, atol=atol)
    for name, p in cell.named_parameters().items():
        np.testing.assert_allclose(p.grad, exact[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("name", list(CELLS))
def test_small_late_xs_are_copied_once_per_call_and_equal_the_equations(name):
    make, step, n_states = CELLS[name]
    tn.manual_seed(1)
    cell = make()
    seq = nn.Sequencer(cell).set_plan_options(NUMPY)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=0)
    runner, bwd = _runner(seq)
    assert bwd.program.plan.donated  # (the dZ rows over the saved gate rows)
    head, loop = runner.source.split("for _t", 1)
    copies = [line.strip() for line in head.splitlines() if "[...] = _X" in line]
    assert copies, runner.source  # the late xs copied whole before the loop ...
    assert "if _alias:" not in loop and "_P" not in loop  # ... and not in any step
    blocks = [runner.bound[c.split("[")[0]] for c in copies]
    assert all(b.shape[0] == 5 for b in blocks)  # (every step's rows)
    report = sum(r.workspace_bytes for r in bwd.report.loops)
    carries = [a for k, pair in runner.bound.items() if k.startswith("_C") for a in pair]
    assert sum(b.nbytes for b in blocks) <= scan_run.LATE_BLOCK_BYTES
    assert report == sum(b.nbytes for b in blocks + carries)  # (the carries' two arrays each)
    # a new length, a new batch size, the first length again, replaced weights, float32,
    # float64 again: each program's runner its own blocks, each call the equations' numbers
    # (B = 2: the dZ gate columns are not contiguous in a row, the body writes them with one
    # concatenate after its last read: no late xs)
    for T, B in ((7, 1), (7, 2), (5, 1)):
        check_step(seq, cell, step, n_states, T=T, B=B, seed=T + B)
        if B == 1:
            assert _runner(seq)[0].bound[copies[0].split("[")[0]].shape[:2] == (T, 1)
    for p in cell.parameters():  # (new arrays: traced again)
        p.data = np.random.default_rng(9).standard_normal(p.data.shape)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=11)
    seq.astype(np.float32)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=12, dtype=np.float32, rtol=1e-4)
    seq.astype(np.float64)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=13)


@pytest.mark.parametrize("name", ["FastLSTM", "LSTM"])
def test_remembered_chunks_equal_the_equations_and_the_per_step_copies(name, monkeypatch):
    """remember("both") over chunks of 4, 3 and 4 steps, then forget(): outputs equal the
    equations over the whole sequence; gradients equal those of the per-step copies and of
    unroll=True."""
    make, step, n_states = CELLS[name]
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((11, 1, H))
    gs = rng.standard_normal((11, 1, H))
    results = {}
    for mode in ("block", "rows", "unrolled"):
        monkeypatch.setattr(scan_run, "LATE_BLOCK_BYTES", 0 if mode == "rows" else 8 << 10)
        tn.manual_seed(2)
        cell = make()
        want, _ = run(step, _params(cell), xs, n_states, H)
        seq = nn.Sequencer(cell, unroll=mode == "unrolled").set_plan_options(NUMPY)
        seq.remember("both")
        got = []
        for lo, hi in ((0, 4), (4, 7), (7, 11), (0, 4)):
            if lo == 0:
                seq.forget()
            seq.zero_grad_parameters()
            y = np.array(seq.forward(xs[lo:hi]))
            np.testing.assert_allclose(y, want[lo:hi], rtol=1e-12, atol=1e-12)
            got += [y, np.array(seq.backward(xs[lo:hi], gs[lo:hi]))]
            got += [p.grad.copy() for p in cell.parameters()]
        if mode != "unrolled":
            source = _runner(seq)[0].source.split("for _t", 1)[1]
            assert ("_P" in source) == (mode == "rows")
        results[mode] = got
    for a, b, c in zip(results["block"], results["rows"], results["unrolled"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


def test_without_the_copies_the_gradients_are_wrong():
    """The copies are what keeps the gradients right: the runner told that no late xs lies
    in its slab (so it copies nothing) computes LSTM's gradients from overwritten gates."""
    make, step, n_states = CELLS["LSTM"]
    tn.manual_seed(1)
    cell = make()
    seq = nn.Sequencer(cell).set_plan_options(NUMPY)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=0)
    runner, _ = _runner(seq)
    shares = runner.bound["_np_shares"]
    runner.bound["_np_shares"] = lambda *a: False
    try:
        with pytest.raises(AssertionError):
            check_step(seq, cell, step, n_states, T=5, B=1, seed=0)
    finally:
        runner.bound["_np_shares"] = shares
    check_step(seq, cell, step, n_states, T=5, B=1, seed=0)


@pytest.mark.parametrize("name", list(CELLS))
def test_the_reverse_loops_carries_alternate_between_two_arrays(name):
    """The reverse loop's carries (dh, dc: computed, not a ys) go into two arrays the runner
    holds, each step writing the one its carry is not read from; with one array for both
    (a step writing over the carry it still reads) LSTM's gradients are wrong, and right
    again with two."""
    make, step, n_states = CELLS[name]
    tn.manual_seed(4)
    cell = make()
    seq = nn.Sequencer(cell).set_plan_options(NUMPY)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=1)
    runner, _ = _runner(seq)
    pairs = {k: v for k, v in runner.bound.items() if k.startswith("_C")}
    assert len(pairs) == n_states, runner.source
    for k, (a, b) in pairs.items():
        assert f"{k}\n" in runner.source and a is not b and not np.shares_memory(a, b)
    loop = runner.source.split("for _t", 1)[1]
    assert "_Q0 = _Q0, w0" in loop
    check_step(seq, cell, step, n_states, T=6, B=2, seed=2)  # (another program: its own pairs)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=3)
    if name != "LSTM":  # (FastLSTM's and GRU's steps read their carries before writing)
        return
    key = "_C1"  # (dc: LSTM's step computes it from dh + dy first, then reads the old dc)
    runner.bound[key] = (pairs[key][0], pairs[key][0])
    try:
        with pytest.raises(AssertionError):
            check_step(seq, cell, step, n_states, T=5, B=1, seed=3)
    finally:
        runner.bound[key] = pairs[key]
    check_step(seq, cell, step, n_states, T=5, B=1, seed=3)


@pytest.mark.parametrize("name", list(CELLS))
def test_xs_the_body_never_reads_are_not_split_into_rows(name):
    make, step, n_states = CELLS[name]
    tn.manual_seed(5)
    cell = make()
    seq = nn.Sequencer(cell).set_plan_options(NUMPY)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=4)
    runner, _ = _runner(seq)
    head, loop = runner.source.split("for _t, ", 1)
    names, _ = loop.split(" in zip(", 1)
    params = head.split("def run(", 1)[1].split(")", 1)[0]
    body = loop.split("\n", 1)[1]
    for name_ in [v.strip() for v in names.split(",") if v.strip().startswith("a")]:
        assert re.search(rf"\b{name_}\b", body), name_  # every row taken is read ...
    taken = {v.strip() for v in names.split(",")}
    xs = [p.strip() for p in params.split(",") if p.strip().startswith("_X")]
    # ... and an xs whose row would not be read is not split (the backward has such xs)
    assert len([v for v in taken if v.startswith("a")]) < len(xs), runner.source
    check_step(seq, cell, step, n_states, T=7, B=2, seed=5)


def _forward_runner(seq):
    pair = runtime_of(seq).history[-1].exe.compile_training()
    fwd = pair.forward.program
    (runner,) = [v for v in fwd.fn.__kwdefaults__.values() if hasattr(v, "source")]
    return runner


def test_ys_row_slices_are_split_once_per_call_and_a_failing_step_names_its_node():
    """LSTM's forward writes each gate into a slice of its step's gate row: the runner takes
    one view per gate and call, split by the loop's iteration, not a slice per gate and step;
    the body keeps its line numbers (a failing step names the node that failed)."""
    make, step, n_states = CELLS["LSTM"]
    tn.manual_seed(6)
    cell = make()
    seq = nn.Sequencer(cell).set_plan_options(NUMPY)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=6)
    for runner in (_forward_runner(seq), _runner(seq)[0]):
        head, loop = runner.source.split("for _t, ", 1)
        assert not re.search(r"\bo\d+ = w\d+\[i\d+\]", loop), runner.source
        splits = re.findall(r"(_S\d+) = (_Y\d+)\[(_ix\d+)\]", head)
        assert len(splits) == 4  # (the four gates' dZ / activations)
        assert all(s in loop.split(":", 1)[0] for s, _, _ in splits)
    check_step(seq, cell, step, n_states, T=7, B=1, seed=7)
    runner = _forward_runner(seq)
    tanh = runner.bound["np_tanh"]

    def broken(*a, **k):
        raise FloatingPointError("boom")

    runner.bound["np_tanh"] = broken
    try:
        with pytest.raises(tn.TapernnError, match=r"step 0 of 7\): tanh failed: boom"):
            seq.forward(np.ones((7, 1, H)))
    finally:
        runner.bound["np_tanh"] = tanh
    check_step(seq, cell, step, n_states, T=7, B=1, seed=8)


def test_views_of_a_buffer_are_made_once():
    """A value a NumPy ufunc computes into a buffer (bound once) is that buffer every call, so
    its views are bound once too (codegen._static_view): LSTM's forward step slices its gate
    buffer four times a step before; a value from anything but ufunc calls with out= of that
    buffer is not taken for the buffer (codegen._note_static)."""
    from tapernn import codegen
    from tapernn.graph import Node

    make, step, n_states = CELLS["LSTM"]
    tn.manual_seed(6)
    cell = make()
    seq = nn.Sequencer(cell).set_plan_options(NUMPY)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=9)
    runner = _forward_runner(seq)
    loop = runner.source.split("for _t, ", 1)[1]
    assert not re.search(r"\bv\d+ = v\d+\[i\d+\]", loop), runner.source
    assert re.search(r"\br\d+\b", loop)
    check_step(seq, cell, step, n_states, T=6, B=2, seed=10)

    buf = np.empty((2, 4))
    n = Node("add", [], {}, (2, 4), np.dtype(np.float64))
    plan = type("Plan", (), {"inplace": {}})()

    def static_of(lines, bound):
        static = {}
        codegen._note_static(n, "b0", lines, static, {"b0": buf, **bound}, plan)
        return static

    assert static_of(["np_add(a0, a1, out=b0)"], {"np_add": np.add}) == {n: buf}
    chain = ["v9 = np_negative(a0, out=b0)", "np_exp(v9, out=v9)"]
    assert static_of(chain, {"np_negative": np.negative, "np_exp": np.exp}) == {n: buf}
    assert not static_of(["f_op(a0, out=b0)"], {"f_op": lambda a, out=None: a + 1})
    assert not static_of(["np_add(a0, a1, out=v3)"], {"np_add": np.add})
    assert not static_of(["v9 = np_add(a0, a1)", "np_exp(v9, out=b0)"], {"np_add": np.add})


@pytest.mark.parametrize("layout", ["batch", "feature"])
def test_both_layouts_equal_the_equations(layout):
    """The runner's carries, blocks, split slices and static views under both loop layouts
    (feature-major holds the carries as (H, B)), over new lengths and batch sizes."""
    for make, step, n_states in CELLS.values():
        tn.manual_seed(7)
        cell = make()
        seq = nn.Sequencer(cell).set_plan_options(PlanOptions(backend="numpy", layout=layout))
        for T, B, seed in ((5, 1, 20), (6, 3, 21), (5, 1, 22)):
            check_step(seq, cell, step, n_states, T=T, B=B, seed=seed)
