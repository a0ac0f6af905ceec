"""tools/bench_compiler.py --sequencer: the report and the --check verdict (times faked; the
real measurement is a tool run, never a timed assertion)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_tool

_PATH = Path(__file__).resolve().parents[1] / "tools" / "bench_compiler.py"


@pytest.fixture
def tool():
    return load_tool("bench_compiler")


@pytest.mark.parametrize("t50,t100,met", [(0.4, 0.8, True), (0.4, 1.1, False), (0.3, 0.8, False)])
def test_sequencer_report_and_check(tool, monkeypatch, capsys, t50, t100, met):
    fake = {50: ([t50, t50 + 0.5, t50], [0.05] * 3), 100: ([t100, t100, t100 + 0.5], [0.1] * 3)}
    monkeypatch.setattr(tool, "sequencer_compile_times", lambda cell, repeats: fake)
    code = tool.sequencer_main(["LSTM"], 3, check=True)
    out = capsys.readouterr().out
    assert f"{t50:.2f}" in out and f"{t100:.2f}" in out and f"{t100 / t50:.2f}" in out
    assert ("target (first cell)" in out) and (": met" in out) == met
    assert code == (0 if met else 1)
    assert tool.sequencer_main(["LSTM"], 3, check=False) == 0


def test_arguments_are_validated(tool, capsys):
    args = tool.parse_args(["--sequencer", "--cells", "GRU", "--repeats", "2"])
    assert args.sequencer and args.cells == ["GRU"] and args.repeats == 2 and args.shape == []
    assert tool.parse_args(["20", "4"]).shape == [20, 4]
    for bad in (["--cells", "LSMT"], ["--repeats", "0"], ["1", "2", "3", "4", "5"], ["0"]):
        with pytest.raises(SystemExit) as exc:
            tool.parse_args(bad)
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_scan_mode_runs_at_small_sizes(tool, monkeypatch, capsys):
    import sys

    sys.path.insert(0, str(_PATH.parent))
    import bench_scan

    r = bench_scan.first_call(5)
    assert set(r) == {"trace", "grad", "compile", "first run", "nodes"} and r["nodes"] > 0
    rolled, unrolled, diff = bench_scan.rolled_vs_unrolled(3, 1, 2, np.float64, repeats=1)
    assert rolled > 0 and unrolled > 0 and diff < 1e-12
    per_step, alone = bench_scan.loop_overhead(T=50, repeats=1)
    assert per_step > 0 and alone > 0
    assert tool.parse_args(["--scan"]).scan
