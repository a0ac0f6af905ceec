"""tools/bench.py wiring: the table, the tapernn step and the pass ablation on the smallest
config, with the real modules."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "tools" / "bench.py"


@pytest.fixture
def bench():
    from tapernn.apps.benchmark import harness

    return harness


def test_quick_table_with_the_real_modules(bench, capsys):
    bench.main(["--configs", "1,5,5", "--budget", "0.05", "--ablation"])
    out = capsys.readouterr().out
    assert "BLAS:" in out
    for name in ("reference (", "numpy matmul", "tn FastLSTM", "tn LSTM(peephole=False)", "tn GRU"):
        assert name in out
    assert "not available" not in out and "error:" not in out
    assert "DEFAULT (" in out and "planned MiB" in out
    # each cell has a timing row and a memory row (saved, buffers, ..., saved/5H)
    memory = out[out.index("tapernn KiB") :].splitlines()
    for name in ("FastLSTM", "LSTM(peephole=False)", "LSTM", "GRU"):
        rows = [line.split() for line in memory if line.split()[:2] == ["tn", name]]
        assert len(rows) == 1 and len(rows[0]) == 10 and rows[0][-1].endswith("x"), (name, memory)
    # and a measured loop-peak row: tracemalloc bytes, over the minimum, the report, the ratio
    loop = out[out.index("tapernn loop peak KiB") :].splitlines()
    rows = [line.split() for line in loop if line.split()[:2] == ["FastLSTM", "(tracemalloc)"]]
    assert len(rows) == 1 and len(rows[0]) == 6 and rows[0][-1].endswith("x"), loop
    assert "Pass ablation, Sequencer(FastLSTM)" in out and "- fuse_gate_matmuls" in out


def test_ablation_of_another_cell(bench, capsys):
    from tapernn import passes

    bench.main(
        [
            "--configs",
            "1,5,5",
            "--budget",
            "0.02",
            "--ablation",
            "--ablation-cell",
            "LSTM(peephole=False)",
        ]
    )
    out = capsys.readouterr().out
    assert "Pass ablation, Sequencer(LSTM(peephole=False))" in out
    rows = [line for line in out.splitlines() if line.strip().startswith(("DEFAULT (", "- "))]
    assert len(rows) == len(passes.DEFAULT) + 3 and "not available" not in out
    assert rows[-2].strip().startswith("- parameter blocks")
    # issue 16's rolled-vs-unrolled row: the same passes on the unroll=True program, whose
    # kernels grow with T (5 steps here) where the rolled program's body is compiled once
    assert rows[-1].strip().startswith("- rolled loops (unroll=True)")
    rolled, unrolled = (int(r.split()[-2]) for r in (rows[0], rows[-1]))
    assert unrolled > rolled, (rows[0], rows[-1])


def test_failing_contender_is_disabled_with_its_error(bench):
    def broken():
        raise RuntimeError("half-written")

    contenders = [bench.Contender("ok", lambda: None, 1.0), bench.Contender("bad", broken, 1.0)]
    bench.time_interleaved(contenders, budget_s=0.01, min_reps=2, max_reps=3)
    assert len(contenders[0].times) >= 2
    assert contenders[1].step is None and "half-written" in contenders[1].note


def test_flop_count_matches_the_documented_formula(bench):
    B, T, D, H = 32, 50, 128, 256
    assert bench.lstm_flops(B, T, D, H) == 3 * 2 * T * B * (D + H) * 4 * H
    # without dX: forward 2*T*B*(D+H)*4H, backward dh, dW_x, dW_h
    assert bench.lstm_flops(B, T, D, H, dx=False) == 2 * T * B * (2 * D + 3 * H) * 4 * H


def test_no_grad_input_table_drops_dx_everywhere(bench, capsys, monkeypatch):
    from tapernn import nn

    try:
        bench.main(["--configs", "1,5,5", "--budget", "0.02", "--no-grad-input", "--cells", "GRU"])
        out = capsys.readouterr().out
        assert "no input gradient anywhere" in out and "tn GRU" in out and "error:" not in out
        calls = []
        real = nn.Module.backward

        def spy(self, input, grad_output, need_grad_input=True):
            calls.append(need_grad_input)
            return real(self, input, grad_output, need_grad_input=need_grad_input)

        monkeypatch.setattr(nn.Module, "backward", spy)
        args = bench.parse_args(["--configs", "1,5,5", "--no-grad-input", "--cells", "GRU"])
        contenders, _ = bench.build_contenders(1, 5, 5, 5, "float64", args)
        (tn,) = [c for c in contenders if c.name.startswith("tn GRU")]
        tn.step()
        assert calls == [False]
    finally:
        bench.need_dx[0] = True


def test_peer_rests_once_per_side_switch_and_shows_progress(bench, monkeypatch):
    import tqdm

    ticks = []

    class Bar(tqdm.tqdm):
        def update(self, n=1):
            ticks.append(n)
            return super().update(n)

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    rests = []
    from tapernn.apps.benchmark import timing

    monkeypatch.setattr(timing.time, "sleep", rests.append)
    order = []
    contenders = [
        bench.Contender("a", lambda: order.append("a"), 1.0),
        bench.Contender("b", lambda: order.append("b"), 1.0),
        bench.Contender("peer", lambda: order.append("peer"), 1.0, peer=True),
    ]
    bench.time_interleaved(contenders, budget_s=0.01, min_reps=40, max_reps=40, progress=True)
    assert [len(c.times) for c in contenders] == [40, 40, 40]
    sides = [s == "peer" for s in order[8:]]  # from the last warm-up call (three per contender)
    switches = sum(x != y for x, y in itertools.pairwise(sides))
    assert 1 <= len(rests) == switches <= bench.PEER_BLOCKS  # was a rest at each of ~80 switches
    assert sum(ticks) == 120  # the progress bar: one tick per timed run


def test_backends_side_by_side(bench, capsys):
    from tapernn.backends import numba_available

    if not numba_available():
        pytest.skip("numba is not installed")
    bench.main(
        [
            "--configs",
            "1,5,5",
            "--budget",
            "0.02",
            "--backends",
            "numpy",
            "numba",
            "--cells",
            "FastLSTM",
        ]
    )
    out = capsys.readouterr().out
    assert "tn FastLSTM [numpy]" in out and "tn FastLSTM [numba]" in out
    assert "tn GRU" not in out and "error:" not in out
    # the loop peaks are measured per backend too, each program against its own report
    loop = out[out.index("tapernn loop peak KiB") :].splitlines()
    for name in ("FastLSTM [numpy]", "FastLSTM [numba]", "FastLSTM rolled [numba]"):
        rows = [line for line in loop if line.strip().startswith(name + " (tracemalloc)")]
        assert len(rows) == 1, (name, loop)


def test_blocks_alternate_contenders_with_one_rest_per_library_hand_over(bench, monkeypatch):
    from tapernn.apps.benchmark import timing

    rests, order, setups = [], [], []
    monkeypatch.setattr(timing.time, "sleep", rests.append)
    monkeypatch.setattr(timing, "BLOCK_MAX_STEPS", timing.BLOCK_MIN_STEPS)
    contenders = [
        bench.Contender("a", lambda: order.append("a"), 1.0),
        bench.Contender("b", lambda: order.append("b"), 1.0),
        bench.Contender("peer", lambda: order.append("peer"), 1.0, peer=True),
    ]
    contenders[2].setup = lambda: setups.append(len(order))
    timing.time_blocks(contenders, budget_s=0.0)
    rounds = timing.BLOCK_MIN_ROUNDS
    assert [len(c.block_times) for c in contenders] == [rounds] * 3
    # a block: one untimed call and n timed ones back to back (the same n in every block)
    runs = [(k, len(list(g))) for k, g in itertools.groupby(order[3:])]  # (after the sizing)
    assert {n % (1 + timing.BLOCK_MIN_STEPS) for _, n in runs} == {0}
    assert [order.count(k) for k in ("a", "b", "peer")] == [1 + rounds * 11] * 3
    sides = [k == "peer" for k, _ in runs]
    switches = sum(x != y for x, y in itertools.pairwise(sides))
    assert len(rests) == switches == rounds  # (the sides' order alternates: one per round)
    assert len(setups) == rounds + 1  # (its sizing call, then before each of its blocks)


def test_tiny_config_prints_single_calls_and_blocks(bench, capsys):
    bench.main(["--configs", "1,5,5", "--budget", "0.02", "--cells", "GRU"])
    out = capsys.readouterr().out
    single = out.index("single calls, interleaved")
    blocks = out.index("blocks of steps back to back")
    rows = [
        line.split()
        for line in out[single : out.index("memory:")].splitlines()
        if line.split()[:2] == ["tn", "GRU"]
    ]
    assert single < blocks and len(rows) == 2, out  # one row in each table
    bench.main(["--configs", "1,5,5", "--budget", "0.02", "--cells", "GRU", "--blocks", "none"])
    assert "blocks of steps" not in capsys.readouterr().out


@pytest.mark.parametrize("timer", ["interleaved", "blocks"])
def test_every_hand_over_between_thread_pools_rests(bench, monkeypatch, timer):
    """A tapernn contender that may own its calls' threads (BLAS at one thread plus its worker)
    is a pool of its own: the NumPy contenders' 2-thread OpenBLAS pool spins after their last
    call on the core the owned call's worker needs (hown measured the owned step 2.3x slower
    right after one), so each hand-over between any two pools gets a rest, not only those
    between libraries."""
    from tapernn.apps.benchmark import timing

    events = []
    monkeypatch.setattr(timing.time, "sleep", lambda s: events.append("rest"))
    monkeypatch.setattr(timing, "BLOCK_MAX_STEPS", timing.BLOCK_MIN_STEPS)
    contenders = [
        bench.Contender("a", lambda: events.append("numpy"), 1.0),
        bench.Contender("owned", lambda: events.append("owned"), 1.0, pool="tapernn numba"),
        bench.Contender("peer", lambda: events.append("peer"), 1.0, peer=True),
    ]
    if timer == "interleaved":
        bench.time_interleaved(contenders, budget_s=0.01, min_reps=12, max_reps=12)
        timed = events[9:]  # (after the warm-up: three calls per contender)
    else:
        timing.time_blocks(contenders, budget_s=0.0)
        timed = events[3:]  # (after the sizing calls)
    runs = [k for k, _ in itertools.groupby(timed)]
    for before, after in itertools.pairwise(runs):
        # every change of pool (numpy / owned / peer) has a rest between the two
        assert "rest" in (before, after), runs
    assert {"numpy", "owned", "peer"} <= set(runs)


def test_roofline_bound_and_shares_from_the_peak(monkeypatch):
    """The bound line divides the step's FLOPs by the measured GEMM peak and by the fastest torch
    row's median; each share is a row's FLOP rate over the peak."""
    from tapernn.apps.benchmark import roofline
    from tapernn.apps.benchmark.timing import Contender

    monkeypatch.setattr(roofline, "gemm_peak", lambda dtype, threads=None: (200e9, "fake 8^3"))
    rows = [
        Contender("reference", None, flops=5e9, times=[0.05, 0.04, 0.06]),  # 100 GF/s: 50 %
        Contender("tn", None, flops=5e9, times=[0.032]),  # 156 GF/s: 78 %
        Contender("torch 1", None, flops=5e9, peer=True, times=[0.030]),
        Contender("torch 2", None, flops=5e9, peer=True, times=[0.027]),
        Contender("not run", None, note="skipped"),
    ]
    peak_line, bound_line = roofline.roofline_lines(rows, "float32")
    assert "200.0 GFLOP/s (fake 8^3" in peak_line
    assert "reference 50%" in peak_line and "tn 78%" in peak_line and "not run" not in peak_line
    # 5 GFLOP at 200 GF/s = 25 ms, over torch 2's 27 ms
    assert "25.000 ms = 0.926x torch 2 " in bound_line, bound_line
    assert roofline.roofline_lines(rows[:2], "float32")[1:] == []  # no peer: no bound line


def test_roofline_peak_is_a_real_gemm_rate(monkeypatch):
    from tapernn.apps.benchmark import roofline

    monkeypatch.setattr(roofline, "PEAK_SIZES", (64, 256))
    rate, where = roofline.gemm_peak.__wrapped__("float64", None)
    assert 1e8 < rate < 1e13 and where.startswith("numpy matmul ")


def test_large_config_prints_the_roofline(bench, capsys, monkeypatch):
    from tapernn.apps.benchmark import roofline

    monkeypatch.setattr(roofline, "gemm_peak", lambda dtype, threads=None: (1e11, "fake"))
    bench.main(
        ["--configs", "2,3,40", "--budget", "0.05", "--cells", "FastLSTM", "--blocks", "none"]
    )
    out = capsys.readouterr().out
    assert "roofline: GEMM peak here 100.0 GFLOP/s (fake" in out and "tn FastLSTM" in out
