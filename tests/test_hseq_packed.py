"""A Seq* module's rolled loops on numba's packed path: its weight blocks are open-ended row
slices of `weight` (W[:D], W[D:]) that the loops pack; pack_scratch.param_rows reads an open
end as the block's row count (it was None: TypeError planning the panels' rows at every
(32, 50, 256) SeqLSTM on numba). Values and gradients against the unroll=True program on the
NumPy plan (1e-12)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import PlanOptions, nn, pack_scratch
from tapernn.backends import numba_available
from tapernn.graph import Node

F64 = np.dtype("float64")


class _Graph:
    def __init__(self, *shapes):
        self.inputs = [Node("input", (), {"kind": "param"}, s, F64) for s in shapes]


@pytest.mark.parametrize(
    "index,rows", [((3, None, None), (3, 7)), ((None, 3, None), (0, 3)), ((-4, None, 1), (3, 7))]
)
def test_param_rows_of_an_open_ended_slice(index, rows):
    g = _Graph((7, 16))
    block = Node(
        "getitem", (g.inputs[0],), {"index": (("s", *index),)}, (rows[1] - rows[0], 16), F64
    )
    found = pack_scratch.param_rows(block, {g.inputs[0]: 0})
    assert found == (0, rows)
    assert pack_scratch._size(g, *found) == block.shape[0] * 16


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
@pytest.mark.usefixtures("packed_now")
def test_seqlstm_on_the_packed_path_equals_unrolled_numpy():
    """(T, B, H) = (4, 16, 256): each loop weight >= 65,536 elements, packed. Compiles the
    rolled forward and backward loops (kernels shared with Sequencer(FastLSTM)'s bodies)."""
    T, B, H = 4, 16, 256
    tn.manual_seed(1)
    rolled = nn.SeqLSTM(H, H)
    rolled.set_plan_options(PlanOptions(backend="numba", own_threads="off", batch_split="off"))
    base = nn.SeqLSTM(H, H, unroll=True)
    base.load_state_dict(rolled.state_dict())
    base.set_plan_options(PlanOptions(backend="numpy"))
    rng = np.random.default_rng(2)
    x, seed = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
    for _ in range(2):  # (the second call: panels lent from .grad again)
        got = [m.forward(x).copy() for m in (rolled, base)]
        np.testing.assert_allclose(got[0], got[1], rtol=1e-12, atol=1e-13)
        for m in (rolled, base):
            m.zero_grad_parameters()
        gx = [m.backward(x, seed).copy() for m in (rolled, base)]
        np.testing.assert_allclose(gx[0], gx[1], rtol=1e-12, atol=1e-13)
        for name, p in base.named_parameters().items():
            q = rolled.named_parameters()[name]
            np.testing.assert_allclose(q.grad, p.grad, rtol=1e-12, atol=1e-12, err_msg=name)
    assert any("rolled: " in n for n in rolled.compile_report().notes)
