"""The weight gradients computed into the parameters' zeroed `.grad` (issue 19): a split
backward's GEMM (or gate-block concat) outputs get a slot of Program.dest, and
nn.packing.Packing.compute_into points it at `.grad` when that holds only zeros, instead of a
temporary added to it. Torch7 semantics kept: gradients accumulate across backwards until
zero_grad_parameters. Structure (the generated `out=_dest[k]`, the returned array is `.grad`
itself, no slot when `.grad` is not zero or overlaps an argument) and equivalence in float64 at
1e-12 against NumPy equations (complex step), the reference interpreter and the path without
slots, for FastLSTM, LSTM, GRU, stacked, remember and need_grad_input=False. Also: the
forward's contiguous loop-weight copy is allocated per call (not in the pair's arena), and
clip_grad_norm makes no gradient-sized temporary."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import PlanOptions, nn
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.interpret import interpret
from tapernn.nn.runtime import runtime_of
from tapernn.nn.training_pair import per_call_peak
from tests import cell_reference as ref

H, T, B = 8, 6, 3
ON = PlanOptions(backend="numpy", grad_into_min_bytes=1)  # (every size: these are small)
OFF = PlanOptions(backend="numpy", grad_into_min_bytes=0)
CELLS = {
    "FastLSTM": lambda: nn.FastLSTM(H, H),
    "LSTM": lambda: nn.LSTM(H, H),
    "GRU": lambda: nn.GRU(H, H),
    "stacked": lambda: nn.Sequential(nn.FastLSTM(H, H), nn.LSTM(H, H)),
}
STEPS = {"FastLSTM": (ref.fastlstm_step, 2), "LSTM": (ref.lstm_step, 2), "GRU": (ref.gru_step, 1)}


def _data(seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))


def _pair(seq):
    return runtime_of(seq).history[-1].exe.compile_training()


def _model(cell, options):
    tn.manual_seed(3)
    return nn.Sequencer(CELLS[cell]()).set_plan_options(options)


def _rounds(seq, zero_between, chunks=1, grad_input=True, start=None):
    """Parameter gradients after `chunks` forward/backward rounds (zeroed first, and between
    rounds if `zero_between`; `start`: values put in `.grad` first instead of zeros)."""
    seq.zero_grad_parameters()
    if start is not None:
        for p, s in zip(seq.parameters(), start):
            p.grad[...] = s
    outs = []
    for k in range(chunks):
        if zero_between and k:
            seq.zero_grad_parameters()
        x, g = _data(k)
        outs.append(np.array(seq.forward(x)))
        gx = seq.backward(x, g, need_grad_input=grad_input)
        outs += [np.array(gx)] if grad_input else []
    return outs + [p.grad.copy() for p in seq.parameters()]


def _same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", list(CELLS))
def test_the_weight_gradients_are_computed_into_grad(cell):
    """The backward's weight-gradient outputs have slots (`out=_dest[k]` or the concat's
    array taken from `_dest`), and after a zeroed backward the program returned `.grad`
    itself there (no temporary); without the slots (grad_into_min_bytes=0) there are none."""
    seq = _model(cell, ON)
    x, g = _data(0)
    seq.zero_grad_parameters()
    seq.forward(x)
    exe = runtime_of(seq).history[-1].exe
    program = _pair(seq).backward
    slots = program.program.dest_slots
    assert slots and "_dest[" in program.source
    returned = []
    run = program.run
    program.run = lambda args: returned.append(run(args)) or returned[-1]
    try:
        seq.backward(x, g)
    finally:
        del program.run
    grads = [exe.params[k].grad for k in exe.packing.loose]
    grads += [grp.block.grad for grp in exe.packing.groups]
    first = len(exe.data_wrt)
    hits = [k for k in slots if returned[0][k] is grads[k - first]]
    assert sorted(hits) == sorted(slots)
    assert all(d is None for d in program.program.dest)  # (released after the run)
    plain = _model(cell, OFF)
    plain.forward(x)
    plain.backward(x, g)
    assert not _pair(plain).backward.program.dest_slots


@pytest.mark.parametrize("grad_input", [True, False])
@pytest.mark.parametrize("cell", list(CELLS))
def test_gradients_accumulate_as_torch7s(cell, grad_input):
    """Two rounds without zeroing = the sum of each round's gradients; zeroing between them
    gives the second's; a non-zero `.grad` to start from is added to: all as without the
    slots, at 1e-12 (float64), on the general path (round 1) and the steady one (round 2)."""
    start = [np.full(p.shape, 0.25) for p in _model(cell, OFF).parameters()]
    for zero_between in (False, True):
        for s in (None, start):
            _same(
                _rounds(_model(cell, ON), zero_between, 2, grad_input, s),
                _rounds(_model(cell, OFF), zero_between, 2, grad_input, s),
            )


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("cell", list(STEPS))
def test_gradients_equal_the_numpy_equations(cell, backend):
    """Zeroed, one round, then a second without zeroing (accumulated): the parameter
    gradients are once and twice the complex-step gradients of the NumPy equations."""
    step, n_states = STEPS[cell]
    seq = _model(cell, PlanOptions(backend=backend, grad_into_min_bytes=1))
    params = {k: p.data.copy() for k, p in seq.module.named_parameters().items()}
    x, g = _data(0)
    want = ref.complex_step_grads(step, params, x, n_states, H, g)
    seq.zero_grad_parameters()
    for times in (1, 2):
        seq.forward(x)
        seq.backward(x, g)
        for k, p in seq.module.named_parameters().items():
            np.testing.assert_allclose(p.grad, times * want[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["FastLSTM", "stacked"])
def test_remember_chunks_equal_the_path_without_slots(cell):
    def run(options):
        seq = _model(cell, options)
        seq.remember("both")
        return _rounds(seq, True, 3) + _rounds(seq, False, 3, False)

    _same(run(ON), run(OFF))


@pytest.mark.parametrize("cell", ["FastLSTM", "LSTM"])
def test_the_compiled_backward_into_given_arrays_equals_the_interpreter(cell):
    """The pair's backward graph run by the reference interpreter = the compiled backward with
    zero arrays in its slots (which it returns as those arrays), on the forward's values."""
    seq = _model(cell, ON)
    x, g = _data(1)
    seq.forward(x)
    seq.backward(x, g)
    pair = _pair(seq)
    record = runtime_of(seq).history[-1]
    saved = pair.saved(pair.forward.run(record.args))
    args = saved + [g] + [record.args[k] for k in pair.reads]
    want = interpret(pair.bwd_graph, *[np.array(a) for a in args])
    program = pair.backward
    given = {}
    for k, s in program.program.dest_slots.items():
        given[k] = program.program.dest[s] = np.zeros_like(want[k])
    try:
        got = program.run([np.array(a) for a in args])
    finally:
        program.program.dest[:] = [None] * len(program.program.dest)
    _same(got, want)
    assert given and all(got[k] is a for k, a in given.items())


def test_a_grad_sharing_memory_with_an_argument_is_not_written_during_the_call():
    """A `.grad` that is also (part of) the input array: the GEMM into it would overwrite the
    input another GEMM still reads, so it gets no slot and is added to after the call, as
    without slots."""

    def run(options):
        tn.manual_seed(3)
        m = nn.FastLSTM(H, H)
        seq = nn.Sequencer(m).set_plan_options(options)
        memory = np.zeros(m.o2g.weight.grad.size)
        x = memory[: T * B * H].reshape(T, B, H)
        x[...] = _data(2)[0]
        m.o2g.weight.grad = memory.reshape(m.o2g.weight.grad.shape)
        m.o2g.weight.grad[...] = 0  # (x is now zeros too: what the backward reads)
        out = np.array(seq.forward(x))
        seq.backward(x, _data(2)[1])
        return [out] + [p.grad.copy() for p in seq.parameters()]

    _same(run(ON), run(OFF))


def test_loop_peak_without_the_weight_gradient_temporaries():
    """tracemalloc: the steady loop holds less with the slots (default threshold; (10, 16, 64)
    float64: each weight gradient 128 KiB), by what the compile report says; the backward's
    own per-call peak is both weight gradients lower."""
    x, g = (a.reshape(10, 16, 64) for a in np.random.default_rng(0).standard_normal((2, 10240)))
    peaks, reports = {}, {}
    for least in (0, 1 << 16):
        seq = nn.Sequencer(nn.FastLSTM(64, 64))
        seq.set_plan_options(PlanOptions(backend="numpy", grad_into_min_bytes=least))
        peaks[least] = loop_peak_bytes(tapernn_loop_step(seq, x, g))
        reports[least] = seq.compile_report().peak_bytes
        assert abs(peaks[least] - reports[least]) <= 0.1 * reports[least]
    # (the backward's moment falls by both; the peak by what the next moment allows)
    saved = reports[0] - reports[1 << 16]
    assert saved >= 0.5 * 256 * 64 * 8
    assert peaks[1 << 16] <= peaks[0] - 0.9 * saved
    bwd = _pair(seq).backward
    # (both weight gradients are in the per-call peak without the slots, not with them; the
    # input gradient lies in the dead dZ rows: donate.tail_gemms)
    assert per_call_peak(bwd) >= 2 * 256 * 64 * 8 > per_call_peak(bwd, range(1, 4))


def test_the_loop_weight_copy_is_made_per_call_not_in_the_arena():
    """A pair's forward allocates the contiguous copy of its loop weight (loop_operands) per
    call: not in the shared arena, which is that much smaller; the same values."""
    from tapernn.arena import per_call

    x, g = (a.reshape(4, 8, 256) for a in np.random.default_rng(1).standard_normal((2, 8192)))
    # the NumPy backend's transposed copy (numba's packed loops pack the weight instead)
    numpy = PlanOptions(backend="numpy")
    seq = nn.Sequencer(nn.FastLSTM(256, 256)).set_plan_options(numpy)
    seq.forward(x)
    seq.backward(x, g)
    pair = _pair(seq)
    fwd = pair.forward
    copies = per_call(fwd.graph)
    assert copies and all(n.op == "transpose_copy" for n in copies)
    plan = fwd.program.plan
    assert all(n in plan.fresh and n not in plan.buffer_of for n in copies)
    assert pair.arena.nbytes < sum(n.nbytes for n in copies)
    # the steady loop's report (the copy in the forward's per-call peak) is what it holds
    fresh = nn.Sequencer(nn.FastLSTM(256, 256)).set_plan_options(numpy)
    real = loop_peak_bytes(tapernn_loop_step(fresh, x, g))
    report = fresh.compile_report().peak_bytes
    assert abs(real - report) <= 0.1 * report, (real, report)


def test_clip_grad_norm_makes_no_gradient_sized_temporary():
    import tracemalloc

    p = nn.Linear(512, 512)
    p.weight.grad[...] = np.random.default_rng(0).standard_normal(p.weight.shape)
    p.bias.grad[...] = 1.0
    want = np.sqrt(np.sum(p.weight.grad**2) + np.sum(p.bias.grad**2))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        norm = tn.optim.clip_grad_norm(p.parameters(), 1e9)
        extra = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert norm == pytest.approx(want, rel=1e-12)
    assert extra < p.weight.grad.nbytes // 8
