"""tools/bench.py wiring, run on the smallest config with a stand-in `tapernn.nn` so the table,
the tapernn step and the pass ablation are exercised before the real modules land."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "tools" / "bench.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("tapernn_bench", _PATH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tapernn_bench", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class _Report:
    kernels = 7
    planned_bytes = 2**20


class _Sequencer:
    """Quacks like nn.Sequencer for the harness: forward/backward on (T, B, D) arrays."""

    def __init__(self, cell):
        self.cell, self.passes, self.calls = cell, None, 0

    def astype(self, dtype):
        return self

    def forward(self, x):
        self.calls += 1
        return np.tanh(x)

    def zero_grad_parameters(self):
        pass

    def backward(self, x, grad_h):
        return grad_h * (1 - np.tanh(x) ** 2)

    def set_passes(self, passes):
        self.passes = passes

    def compile_report(self):
        return _Report()


@pytest.fixture
def fake_nn(monkeypatch):
    import tapernn

    nn = types.ModuleType("tapernn.nn")
    nn.Sequencer = _Sequencer
    for name in ("FastLSTM", "LSTM", "GRU"):
        setattr(nn, name, lambda D, H, **kw: (D, H, kw))
    monkeypatch.setitem(sys.modules, "tapernn.nn", nn)
    monkeypatch.setattr(tapernn, "nn", nn, raising=False)
    return nn


def test_quick_table_with_stand_in_modules(bench, fake_nn, capsys):
    bench.main(["--configs", "1,5,5", "--budget", "0.05", "--ablation"])
    out = capsys.readouterr().out
    assert "BLAS:" in out
    for name in ("reference (", "numpy matmul", "tn FastLSTM", "tn LSTM(peephole=False)", "tn GRU"):
        assert name in out
    assert "not available" not in out
    assert "DEFAULT (" in out and "planned MiB" in out


def test_missing_nn_is_reported_not_raised(bench, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tapernn.nn", None)  # makes `from tapernn import nn` fail
    bench.main(["--configs", "1,5,5", "--budget", "0.05", "--ablation"])
    out = capsys.readouterr().out
    assert "tapernn nn not available" in out
    assert "ablation not available" in out


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
