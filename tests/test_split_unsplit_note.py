"""hqa18: a split loop's call whose xs lie in the slab across both halves' rows runs the unsplit
loop (SplitRunner._apart); on main its report line still said only "batch split over 2 threads",
so a user reading the report could not tell (seen with a masked FastLSTM whose rows were made
narrower: the forward ran unsplit every call). The line now says so. (The LSTM of
test_split_late.py: its kernels are shared with that file.)"""

import numpy as np
import pytest

from tapernn import PlanOptions, nn
from tapernn.backends import numba_available
from tapernn.scan_split import SplitRunner

T, B, H = 4, 16, 128

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),
]


def _run(backend, monkeypatch=None):
    m = nn.LSTM(H, H)
    for k, p in enumerate(m.parameters()):
        p.data[...] = np.random.default_rng(k).standard_normal(p.shape) * 0.1
    opts = PlanOptions(backend=backend, layout="batch", own_threads="off", batch_split="on")
    seq = nn.Sequencer(m).set_plan_options(opts)
    rng = np.random.default_rng(0)
    got = []
    for _ in range(2):
        x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
        seq.zero_grad_parameters()
        got += [np.array(seq.forward(x)), np.array(seq.backward(x, g))]
        got += [p.grad.copy() for p in m.parameters()]
    return seq, got


def test_a_call_run_unsplit_says_so_in_the_loop_report(monkeypatch):
    asked = []

    def never_apart(self, slab, xs, ys):
        asked.append(self.attrs["reverse"])
        return False

    monkeypatch.setattr(SplitRunner, "_apart", never_apart)
    seq, got = _run("numba")
    assert asked, "no split call had xs in its slab: the case is not exercised"
    lines = [line for line in str(seq.compile_report()).splitlines() if "loop (top)" in line]
    noted = [line for line in lines if "run unsplit" in line]
    assert len(noted) == len(set(asked)), lines
    assert all("batch split over 2 threads" in line for line in noted), noted
    for a, b in zip(got, _run("numpy")[1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
