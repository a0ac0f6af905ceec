"""The NumPy loop runner's reverse-loop carry pairs (scan_run.make_runner: two alternating
arrays per carry a step computes) are held by the runner only when small
(scan_run.CARRY_HELD_BYTES in all); larger ones are made once per loop call and freed when it
returns, counted in LoopReport.call_bytes, not its workspace (hsplitlend, issue 19: held, the
(32, 50, 256) f32 pairs added 0.08U to the steady loop's peak). Values and complex-step
gradients against the NumPy equations at 1e-12 (float64), the report against tracemalloc."""

import numpy as np
import pytest
from cell_reference import complex_step_grads, fastlstm_step, gru_step, lstm_step, run

import tapernn as tn
from tapernn import PlanOptions, nn, scan_run
from tapernn.apps.benchmark.memory import loop_peak_bytes, tapernn_loop_step
from tapernn.nn.runtime import runtime_of

H = 5
CELLS = {
    "FastLSTM": (lambda: nn.FastLSTM(H, H), fastlstm_step, 2),
    "LSTM": (lambda: nn.LSTM(H, H), lstm_step, 2),
    "GRU": (lambda: nn.GRU(H, H), gru_step, 1),
}
NUMPY = PlanOptions(backend="numpy")


def _runner(seq):
    pair = runtime_of(seq).history[-1].exe.compile_training()
    bwd = pair.last_backward or pair.backward
    (runner,) = [v for v in bwd.program.fn.__kwdefaults__.values() if hasattr(v, "source")]
    return runner, bwd


def _check(seq, cell, step, n_states, T, B, seed):
    rng = np.random.default_rng(seed)
    x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    params = {k: p.data.copy() for k, p in cell.named_parameters().items()}
    want, _ = run(step, params, x, n_states, H)
    seq.zero_grad_parameters()
    y = seq.forward(x)
    gx = seq.backward(x, g)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    exact = complex_step_grads(step, params, x, n_states, H, g)
    np.testing.assert_allclose(gx, exact["input"], rtol=1e-12, atol=1e-12)
    for name, p in cell.named_parameters().items():
        np.testing.assert_allclose(p.grad, exact[name], rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("name", list(CELLS))
def test_large_carry_pairs_are_made_per_call_counted_and_equal_the_equations(name, monkeypatch):
    monkeypatch.setattr(scan_run, "CARRY_HELD_BYTES", 0)
    make, step, n_states = CELLS[name]
    tn.manual_seed(4)
    cell = make()
    seq = nn.Sequencer(cell).set_plan_options(NUMPY)
    for T, B, seed in ((5, 3, 1), (6, 2, 2), (5, 3, 3)):
        _check(seq, cell, step, n_states, T, B, seed)
        runner, bwd = _runner(seq)
        assert not [k for k in runner.bound if k.startswith("_C") and k[2:].isdigit()]
        assert runner.source.count("_np_empty(_Cs") == 2 * n_states
        assert runner.carry_call_bytes == 2 * n_states * B * H * 8
        (loop,) = bwd.report.loops
        assert loop.call_bytes == runner.carry_call_bytes  # (no prologue on NumPy here)
        blocks = [a for k, a in runner.bound.items() if k.startswith("_P") and k[2:].isdigit()]
        assert loop.workspace_bytes == sum(a.nbytes for a in blocks)  # (late xs' alone)


def test_small_carry_pairs_stay_held():
    seq = nn.Sequencer(nn.FastLSTM(H, H)).set_plan_options(NUMPY)
    rng = np.random.default_rng(0)
    seq.forward(rng.standard_normal((5, 1, H)))
    seq.backward(rng.standard_normal((5, 1, H)), rng.standard_normal((5, 1, H)))
    runner, _ = _runner(seq)
    assert runner.carry_call_bytes == 0 and "_C0" in runner.bound


def test_the_report_with_per_call_carries_is_within_10_percent_of_the_loop_peak():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 128)).astype(np.float32)
    g = rng.standard_normal((8, 32, 128)).astype(np.float32)
    seq = nn.Sequencer(nn.FastLSTM(128, 128)).astype("float32").set_plan_options(NUMPY)
    real = loop_peak_bytes(tapernn_loop_step(seq, x, g))
    report = seq.compile_report().peak_bytes
    assert abs(real - report) <= 0.1 * report, (real, report)
    runner, _ = _runner(seq)
    assert runner.carry_call_bytes == 2 * 2 * 32 * 128 * 4
