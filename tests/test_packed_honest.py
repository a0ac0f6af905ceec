"""The packed recurrent GEMM told honestly (issue 19, hgemm2): its weight panels counted in the
compile report's peak, a kernel that fails to compile reported and warned about (never a silent
NumPy fallback), the panels following every change of the parameters (an optimiser step, an
in-place write, a rebinding, a load of a saved model, a clone), and packed = unpacked = NumPy
(the backend without the kernel, and the cells' NumPy equations) over the cells and odd shapes."""

import copy
import gc
import tracemalloc
import warnings

import numpy as np
import pytest
from cell_reference import fastlstm_step, gru_step, lstm_step, run

import tapernn as tn
from tapernn import accounting, nn, optim
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.backends import numba_available
from tapernn.backends import packed as packed_mod
from tapernn.backends.packed import MIN_ROWS
from tapernn.nn.runtime import runtime_of
from tapernn.nn.training_pair import per_call_peak
from tapernn.passes import layout_rule

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
]

# (the shapes test_packed_gemm compiles already: FastLSTM D = 3, H = 130, float64)
D, H, T, B = 3, 130, 3, 5


@pytest.fixture
def numba_backend(monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    before = tn.get_backend()
    tn.set_backend("numba")
    yield
    tn.set_backend(before)


def _seq(make=lambda: nn.FastLSTM(D, H), packed=True, dtype=np.float64):
    tn.manual_seed(0)
    seq = nn.Sequencer(make()).astype(dtype)
    return seq.set_plan_options(tn.PlanOptions(layout="batch", packed_gemm=packed))


def _packed(seq) -> bool:
    notes = [n for loop in seq.compile_report().loops for n in loop.body.notes]
    return any("packed once" in n for n in notes)


def _params(seq) -> dict:
    return {k.split(".", 1)[1]: p.data.copy() for k, p in seq.named_parameters().items()}


def _data(rng, t=T, b=B, d=D, h=H, dtype=np.float64):
    return rng.standard_normal((t, b, d)).astype(dtype), rng.standard_normal((t, b, h)).astype(
        dtype
    )


# ---- 1. memory: the panels are allocated per loop call and counted ----------------------------


def _call_peak(fn) -> int:
    fn()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del out
    return peak


def test_the_packed_panels_are_in_the_programs_peaks(numba_backend, rng):
    """Each loop call packs its weight (W: 130 x 520 float64, 0.54 MB; the step values are a
    few KB here): the forward's and backward's per-call peak (the report's model of what a call
    allocates) include those panels -- tracemalloc within 10 % of it (the forward's was 6x
    under it before) -- and the steady training loop's peak is the report's within 10 %."""
    x, g = _data(rng)
    seq = _seq()
    seq.forward(x)
    seq.backward(x, g)
    assert _packed(seq)
    loops = seq.compile_report().loops
    # one pack per loop: W (130, 520) in 17 panels of 32 columns forward, W^T in 5 backward
    # (AVX-512's; AVX2's: 65 and 17 panels of 8)
    nr = packed_mod.panel_width(np.float64)
    want = [-(-4 * H // nr) * H * nr * 8, -(-H // nr) * 4 * H * nr * 8]
    assert sorted(loop.call_bytes for loop in loops) == sorted(want)
    record = runtime_of(seq).history[-1]
    pair = record.exe.compile_training()
    args = list(record.args)
    real = _call_peak(lambda: pair.forward.run(args))
    model = per_call_peak(pair.forward)
    assert abs(real - model) <= 0.1 * model, (real, model)
    # a program's own report (plan stats: its buffers and per-call values) counts them too
    for c in (pair.forward, pair.backward):
        without = accounting.peak_bytes(c.graph, c.program.plan)
        assert without < c.report.peak_bytes <= without + c.report.loops[0].call_bytes
    saved = pair.saved(pair.forward.run(args))
    real = _call_peak(lambda: pair.run_backward(saved, args, [g]))
    model = per_call_peak(pair.backward)
    assert abs(real - model) <= 0.1 * model, (real, model)
    fresh = _seq()
    real = loop_peak_bytes(tapernn_loop_step(fresh, x, g))
    reported = fresh.compile_report().peak_bytes
    assert abs(real - reported) <= 0.1 * reported, (real, reported)


def test_the_steady_loop_peak_is_the_reported_one_on_numba(numba_backend, rng):
    """LSTM (10, 16, 128) float64, packed: 1.117x the report before hgemm2 (each loop body
    compiled for NumPy too, only to find its values too large for a numba loop kernel, and
    kept with its buffers in the body cache), 1.05x now."""
    x, g = _data(rng, t=10, b=16, d=128, h=128)
    seq = _seq(lambda: nn.LSTM(128, 128))
    real = loop_peak_bytes(tapernn_loop_step(seq, x, g))
    assert _packed(seq)
    reported = seq.compile_report().peak_bytes
    assert abs(real - reported) <= 0.1 * reported, f"{real / reported:.3f}x the report"


def test_a_packed_weight_is_not_copied_contiguous_first(numba_backend, rng):
    """contiguous_loop_weights copies a transposed loop weight for OpenBLAS's NN GEMM; a weight
    the loop packs is packed from the transposed view instead (one W-sized buffer and one copy
    per call fewer: BENCHMARKS.md, hgemm2), with the same values."""
    x, g = _data(rng)
    ops, outs = {}, {}
    for packed in (True, False):
        seq = _seq(packed=packed)
        outs[packed] = _step(seq, x, g)
        pair = runtime_of(seq).history[-1].exe.compile_training()
        ops[packed] = pair.forward.graph.op_counts().get("transpose_copy", 0)
    assert ops == {True: 0, False: 1}
    for a, b in zip(outs[True], outs[False]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# ---- 2. a kernel that fails: reported, warned about once, NumPy's results -------------------


def test_a_failing_packed_kernel_is_reported_and_warned_once(numba_backend, rng, monkeypatch):
    def broken(kind=None):
        raise RuntimeError("LLVM said no")

    fresh = {kind: packed_mod._Handle(kind) for kind in packed_mod.GEOMETRY}
    monkeypatch.setattr(packed_mod, "_HANDLES", fresh)
    monkeypatch.setattr(packed_mod, "_kernel_module", broken)
    monkeypatch.setattr(packed_mod, "_warned", set())
    x, g = _data(rng)
    want = _seq(packed=False)
    want_y = np.array(want.forward(x))
    want_gx = np.array(want.backward(x, g))
    seq = _seq()
    with pytest.warns(RuntimeWarning, match="packed GEMM: numba failed: RuntimeError: LLVM said"):
        y = np.array(seq.forward(x))
    gx = np.array(seq.backward(x, g))
    assert _packed(seq)  # the rewrite ran; its kernel did not
    report = seq.compile_report()
    lines = [f for f in report.fallbacks if f.startswith("packed GEMM:")]
    assert len(lines) == 1 and "LLVM said no" in lines[0], report.fallbacks
    assert "on NumPy: packed GEMM: numba failed" in str(report)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, want_gx, rtol=1e-12, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: a second model does not warn
        other = _seq()
        other.forward(x)
        other.backward(x, g)
    assert any(f.startswith("packed GEMM:") for f in other.compile_report().fallbacks)
    # with background compilation: NumPy until the switch call, which finds the failure
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")
    late = _seq()
    for _ in range(3):
        late.forward(x)
        late.backward(x, g)
    assert any(f.startswith("packed GEMM:") for f in late.compile_report().fallbacks)
    np.testing.assert_allclose(late.output, want_y, rtol=1e-12, atol=1e-12)


# ---- 3. the panels follow the parameters -------------------------------------------------------


def _check(seq, x, where):
    y = np.array(seq.forward(x))
    want, _ = run(fastlstm_step, _params(seq), x, 2, H)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12, err_msg=where)


def test_the_packed_weight_follows_every_change_of_the_parameters(numba_backend, rng, tmp_path):
    """After each change the next call's outputs are the NumPy equations' at the new values
    (a stale pack would give the old ones: every change below moves the outputs)."""
    x, g = _data(rng)
    seq = _seq()
    _check(seq, x, "first call")
    assert _packed(seq)
    w = seq.module.o2g.weight
    # an optimiser step
    opt = optim.SGD(seq.parameters(), lr=0.5)
    seq.zero_grad_parameters()
    seq.forward(x)
    seq.backward(x, g)
    opt.step()
    _check(seq, x, "after optim.SGD.step")
    seq.update_parameters(0.5)
    _check(seq, x, "after update_parameters")
    # in-place writes of the recurrent weight
    w.data[...] = rng.standard_normal(w.shape) * 0.1
    _check(seq, x, "after param.data[...] =")
    w.data[:, 7] += 1.0
    _check(seq, x, "after a column written")
    # a rebinding (a new array: copied per call until flatten_parameters)
    w.data = rng.standard_normal(w.shape) * 0.1
    _check(seq, x, "after param.data = new array")
    seq.flatten_parameters()
    w.data[...] *= -1
    _check(seq, x, "after flatten_parameters and a write")
    # a saved model loaded
    saved = _params(seq)
    tn.save(seq, tmp_path / "m")
    w.data[...] = 0
    _check(seq, x, "zeroed")
    tn.load_into(seq, tmp_path / "m")
    _check(seq, x, "after load_into")
    np.testing.assert_array_equal(w.data, saved["o2g.weight"])
    seq.load_state_dict({k: v * 0.5 for k, v in seq.state_dict().items()})
    _check(seq, x, "after load_state_dict")
    # a clone: its own weights, the original's pack unchanged by its changes and vice versa
    clone = copy.deepcopy(seq)
    clone.module.o2g.weight.data[...] += 0.05
    _check(clone, x, "the clone after its weight changed")
    _check(seq, x, "the original after the clone's weight changed")
    w.data[...] -= 0.05
    _check(seq, x, "the original after its own change")
    _check(clone, x, "the clone after the original's change")


def test_a_cell_shared_by_two_sequencers_packs_the_current_weight(numba_backend, rng):
    x, _ = _data(rng)
    tn.manual_seed(0)
    cell = nn.FastLSTM(D, H)
    a = nn.Sequencer(cell).set_plan_options(tn.PlanOptions(layout="batch"))
    b = nn.Sequencer(cell).set_plan_options(tn.PlanOptions(layout="batch"))
    _check(a, x, "a")
    _check(b, x, "b")
    cell.o2g.weight.data[...] *= 1.5  # through the cell: both see it
    _check(a, x, "a after the shared weight changed")
    _check(b, x, "b after the shared weight changed")


# ---- 4. a loop whose recurrent GEMMs are packed stays batch-major ----------------------------


@pytest.mark.usefixtures("layout_timed")
def test_the_layout_rule_keeps_a_packed_loop_batch_major(numba_backend, rng, monkeypatch):
    """layout="auto" would time the step in both layouts through OpenBLAS (feature-major won at (16, 128, 512)
    f32); packed batch-major GEMMs beat both (BENCHMARKS.md, hgemm2): not timed, batch-major."""

    def timed(*args):
        raise AssertionError("the layout rule timed the GEMMs")

    monkeypatch.setattr(layout_rule, "_TIMER", [timed])
    monkeypatch.setattr(layout_rule, "_DECIDED", {})
    monkeypatch.setattr(layout_rule.layout_cache, "lookup", lambda key: ("feature", "cached"))
    x, g = _data(rng, b=16)
    seq = _seq().set_plan_options(tn.PlanOptions(layout="auto"))
    seq.forward(x)
    seq.backward(x, g)
    notes = seq.compile_report().notes + [
        n for loop in seq.compile_report().loops for n in loop.body.notes
    ]
    assert any("batch-major" in n and "run packed" in n for n in notes), notes
    assert _packed(seq)
    np.testing.assert_allclose(
        seq.output, run(fastlstm_step, _params(seq), x, 2, H)[0], rtol=1e-12, atol=1e-12
    )
    # unpacked: the rule decides as before (here: the cached pick); B = 1: not packed
    for options, b in ((tn.PlanOptions(layout="auto", packed_gemm=False), 16), (None, 1)):
        x1, g1 = _data(rng, b=b)
        other = _seq().set_plan_options(options or tn.PlanOptions(layout="auto"))
        other.forward(x1)
        other.backward(x1, g1)
        notes = other.compile_report().notes
        assert not _packed(other) and not any("run packed" in n for n in notes), notes
        assert b == 1 or any("feature-major" in n for n in notes), notes
    # the "auto" backend lowers a program with a large loop on NumPy: nothing packed, the rule
    # decides as before and the weight is copied contiguous for OpenBLAS
    tn.set_backend("auto")
    try:
        auto = _seq().set_plan_options(tn.PlanOptions(layout="auto"))
        auto.forward(x)
        auto.backward(x, g)
    finally:
        tn.set_backend("numba")
    notes = auto.compile_report().notes
    assert not _packed(auto) and any("feature-major" in n for n in notes), notes


# ---- 5. packed = unpacked = NumPy over cells and shapes ---------------------------------------

# GRU: [W_hr W_hz] (H, 2H) is packed from H = 182; H odd and not a multiple of 16 everywhere
CELLS = {
    "FastLSTM": (lambda h: nn.FastLSTM(D, h), fastlstm_step, 2, 131),
    "LSTM": (lambda h: nn.LSTM(D, h), lstm_step, 2, 131),
    "GRU": (lambda h: nn.GRU(D, h), gru_step, 1, 183),
}


def _step(seq, x, g, need_dx=True):
    seq.zero_grad_parameters()
    y = np.array(seq.forward(x))
    gx = seq.backward(x, g, need_grad_input=need_dx)
    grads = [p.grad.copy() for p in seq.parameters()]
    return [y] + ([np.array(gx)] if need_dx else []) + grads


@pytest.mark.parametrize(
    "cell, b, dtype, need_dx",
    [
        ("FastLSTM", 1, np.float64, True),
        ("FastLSTM", 33, np.float64, False),
        ("LSTM", 33, np.float64, True),
        ("LSTM", 2, np.float64, False),
        ("GRU", 1, np.float64, True),
        ("GRU", 33, np.float64, False),
        ("FastLSTM", 33, np.float32, True),
    ],
)
def test_packed_equals_unpacked_and_numpy(cell, b, dtype, need_dx, rng, monkeypatch):
    make, step, n_states, h = CELLS[cell]
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    x, g = _data(rng, b=b, h=h, dtype=dtype)
    before = tn.get_backend()
    results = {}
    try:
        for name, backend, packed in (
            ("packed", "numba", True),
            ("unpacked", "numba", False),
            ("numpy", "numpy", False),
        ):
            tn.set_backend(backend)
            seq = _seq(lambda: make(h), packed, dtype)
            first = _step(seq, x, g, need_dx)
            assert _packed(seq) == (packed and b >= MIN_ROWS), name  # B = 1: OpenBLAS
            for p in seq.parameters():  # the next call packs the changed weights
                p.data[...] *= 0.9
            results[name] = first + _step(seq, x, g, need_dx)
            params = _params(seq)
    finally:
        tn.set_backend(before)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for other in ("unpacked", "numpy"):
        for k, (got, want) in enumerate(zip(results["packed"], results[other])):
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=f"{k}")
    want, _ = run(step, {k: v.astype(np.float64) for k, v in params.items()}, x, n_states, h)
    n = len(results["packed"]) // 2
    np.testing.assert_allclose(results["packed"][n], want, rtol=tol * 10, atol=tol * 10)
