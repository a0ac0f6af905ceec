"""Issue 16 at the tutorial size (1, 5, 5): what a rolled loop's runner keeps or makes per call
beyond what unroll=True does (htiny7):
- a numba loop kernel's NumPy fallback runner (scan_run.make_runner(hold_copies=False)) holds
  no late-xs copies beside the kernel's workspace: it makes them per call, and those per-call
  copies give the equations' numbers (float64, complex-step gradients, at 1e-12) across a new
  T, B, replaced weights and float32;
- the row check's remembered key (scan_xs.writable_over_xs(memo=True)) is the xs' strides
  alone, so the steady NumPy loop's tracemalloc peak at (1, 5, 5) float32 is at most
  unroll=True's for FastLSTM, LSTM and GRU."""

import functools
import re

import numpy as np
import pytest
from test_runner_costs import CELLS, NUMPY, H, check_step

import tapernn as tn
from tapernn import PlanOptions, nn, scan_run
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.backends import numba_available
from tapernn.nn.runtime import runtime_of


def _runners(seq):
    """The loop runners (or numba Switches) bound by the last call's backward program."""
    pair = runtime_of(seq).history[-1].exe.compile_training()
    bwd = pair.last_backward or pair.backward
    bound = list(bwd.program.bound.values())
    return [v for v in bound if hasattr(v, "bound") and hasattr(v, "source")] or [
        v for v in bound if hasattr(v, "runner") and hasattr(v, "handle")
    ]


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("name", list(CELLS))
def test_per_call_copies_hold_nothing_and_equal_the_equations(name, rows, monkeypatch):
    """Every NumPy runner made as a numba fallback is (hold_copies=False): the late xs copies
    -- whole blocks, or with LATE_BLOCK_BYTES = 0 one row a step -- are arrays made per call,
    none bound to the runner, and the results are the equations'."""
    monkeypatch.setattr(
        scan_run, "make_runner", functools.partial(scan_run.make_runner, hold_copies=False)
    )
    if rows:
        monkeypatch.setattr(scan_run, "LATE_BLOCK_BYTES", 0)
    make, step, n_states = CELLS[name]
    tn.manual_seed(1)
    cell = make()
    seq = nn.Sequencer(cell).set_plan_options(NUMPY)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=0)
    (runner,) = _runners(seq)
    made = re.findall(r"(_P\d+) = _np_empty\(\*_Ps\d+\)", runner.source)
    assert made, runner.source  # (LSTM, FastLSTM and GRU read late xs at B = 1)
    assert not any(re.fullmatch(r"_P\d+", k) for k in runner.bound)  # none held
    head, loop = runner.source.split("for _t", 1)
    assert all(f"{p} = _np_empty" in head for p in made)  # made once per call, before the loop
    assert ("_P" in loop) == rows  # (a row a step, or whole blocks before the loop)
    for T, B in ((7, 1), (7, 2), (5, 1)):
        check_step(seq, cell, step, n_states, T=T, B=B, seed=T + B)
    for p in cell.parameters():  # (new arrays: traced again)
        p.data = np.random.default_rng(9).standard_normal(p.data.shape)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=11)
    seq.astype(np.float32)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=12, dtype=np.float32, rtol=1e-4)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("name", list(CELLS))
def test_a_numba_loop_kernels_fallback_holds_no_copies(name):
    """On the numba backend the loop runs as a kernel; the NumPy runner it falls back to binds
    no late-xs copies (they were ~0.5 KiB of an LSTM's (1, 5, 5) training-loop peak) and the
    kernel's results are the equations'."""
    make, step, n_states = CELLS[name]
    tn.manual_seed(1)
    cell = make()
    seq = nn.Sequencer(cell).set_plan_options(PlanOptions(backend="numba"))
    for T in (5, 7, 5):
        check_step(seq, cell, step, n_states, T=T, B=1, seed=T)
        switches = _runners(seq)
        assert switches and all(hasattr(s, "runner") for s in switches)
        for s in switches:
            fallback = s.runner
            assert not any(re.fullmatch(r"_P\d+", k) for k in fallback.bound)
            assert "_np_empty(*_Ps" in fallback.source or "_P" not in fallback.source


def test_the_row_checks_key_holds_strides_only():
    """The remembered key of the row check has one entry per xs: None or that xs' strides."""
    make, step, n_states = CELLS["LSTM"]
    tn.manual_seed(1)
    cell = make()
    seq = nn.Sequencer(cell).set_plan_options(NUMPY)
    check_step(seq, cell, step, n_states, T=5, B=1, seed=0)
    (runner,) = _runners(seq)
    over = runner.bound["_over"]
    (answers,) = [c.cell_contents for c in over.__closure__ if isinstance(c.cell_contents, dict)]
    assert answers
    for key in answers:
        in_slab = [k for k in key if k is not None]
        assert in_slab and all(
            isinstance(k, tuple) and all(isinstance(s, int) for s in k) for k in in_slab
        ), key


def test_the_numpy_rolled_loop_peak_is_at_most_unrolled_at_the_tutorial_size():
    """Steady training-loop peak (tracemalloc, 3 warm-up + 5 steps, f32 (1, 5, 5)), a
    throw-away model first: rolled NumPy <= unroll=True for each cell (FastLSTM was 108 B
    over before the row check's key lost its shape tuples)."""
    x = np.random.default_rng(0).standard_normal((5, 1, H)).astype(np.float32)
    g = np.ones_like(x)

    def peak(name, unroll):
        tn.manual_seed(0)
        seq = nn.Sequencer(CELLS[name][0](), unroll=unroll).astype(np.float32)
        seq.set_plan_options(NUMPY)
        return loop_peak_bytes(tapernn_loop_step(seq, x, g), warmup=3, steps=5)

    peak("LSTM", False)
    for name in CELLS:
        rolled, unrolled = peak(name, False), peak(name, True)
        assert rolled <= unrolled, (name, rolled, unrolled)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.parametrize("name", list(CELLS))
def test_a_pairs_whole_program_kernels_share_one_workspace(name):
    """The forward's and the backward's whole-program kernels (one module's programs never
    run at once; nothing lives in a workspace between calls) take their workspaces from the
    module's Arena: the same memory, and the equations' numbers across T, B, the
    need_grad_input=False variant and replaced weights (at 1e-12, float64)."""
    make, step, n_states = CELLS[name]
    tn.manual_seed(1)
    cell = make()
    seq = nn.Sequencer(cell).set_plan_options(PlanOptions(backend="numba"))
    for T, B in ((5, 1), (5, 1), (7, 1), (7, 2), (5, 1)):
        for _ in range(3):  # (past the switch call when kernels compile in the background)
            check_step(seq, cell, step, n_states, T=T, B=B, seed=T + B)
        pair = runtime_of(seq).history[-1].exe.compile_training()
        fwd, bwd = pair.forward.program.fn, (pair.last_backward or pair.backward).program.fn
        assert hasattr(fwd, "work") and hasattr(bwd, "work"), (fwd, bwd)
        assert any(np.shares_memory(a, b) for a in fwd.work for b in bwd.work)
    x = np.random.default_rng(5).standard_normal((5, 1, H))
    g = np.random.default_rng(6).standard_normal((5, 1, H))
    for _ in range(3):
        seq.forward(x)
        seq.backward(x, g, need_grad_input=False)
    for p in cell.parameters():
        p.data = np.random.default_rng(9).standard_normal(p.data.shape)
    for _ in range(3):
        check_step(seq, cell, step, n_states, T=5, B=1, seed=11)


def test_the_arenas_workspaces_counted_once():
    """Arena.take_work: one array per dtype, each kernel's workspace its front; Arena.nbytes
    counts the largest asked once (before any is made, and after)."""
    from types import SimpleNamespace

    from tapernn.arena import Arena

    arena = Arena()
    switches = []
    for work in ([("float32", 100), ("float64", 10)], [("float32", 60)]):
        switch = SimpleNamespace(handle=SimpleNamespace(work=work), pool=None)
        switches.append(switch)
        arena.note_loops(SimpleNamespace(program_kernel=switch, report=SimpleNamespace(loops=[])))
    assert all(s.pool is arena for s in switches)
    assert arena.nbytes == 100 * 4 + 10 * 8
    a32, a64 = arena.take_work(switches[0].handle.work)
    (b32,) = arena.take_work(switches[1].handle.work)
    assert a32.size == 100 and b32.size == 60 and np.shares_memory(a32, b32)
    assert a64.dtype == np.float64 and arena.nbytes == 100 * 4 + 10 * 8
