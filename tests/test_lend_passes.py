"""The passes over a weight's `.grad` lent to a loop's packed panels (pack_scratch.py; issue 19,
hzero). A split or unsplit backward's loop leaves its panels in a `.grad` the backward then
computes whole (pack_scratch.Lent.left): the same bits as zeroing them first; a backward that
raises leaves that `.grad` holding zeros; a backward after a raised one lends a `.grad` again
only if it holds zeros then -- a `.grad` the user filled meanwhile (accumulating without
zeroing) is never packed over (failed on main: the slot stayed set). A forward fills a `.grad`
lent to its panels once (the loop's runner), not again after the call (Scratch.panels); the
transposed copies' `.grad` rows still are. float64, 1e-12 against a model that never raised."""

import numpy as np
import pytest
from lend_check import data, seeded, spy_lend

from tapernn import PlanOptions, nn
from tapernn.backends import numba_available
from tapernn.nn.runtime import runtime_of

T, B, H = 4, 16, 128

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
]

OPTIONS = {
    "split": {"own_threads": "off", "batch_split": "on"},
    "unsplit": {"own_threads": "off", "batch_split": "off"},
}


class Boom(Exception):
    pass


CELLS = {"FastLSTM": lambda: nn.FastLSTM(H, H), "LSTM": lambda: nn.LSTM(H, H, peephole=False)}


def _seq(options, cell="FastLSTM"):
    m = seeded(CELLS[cell], 0)
    seq = nn.Sequencer(m).set_plan_options(PlanOptions(backend="numba", layout="batch", **options))
    return seq, m


def _steady(seq, x, g, rounds=3):
    for _ in range(rounds):  # (the first calls run the general path and the full loop)
        seq.zero_grad_parameters()
        seq.forward(x)
        seq.backward(x, g)


def _raise_in_backward(seq, x, g, monkeypatch):
    """One zeroed forward, then a backward whose program raises after its loop (the weight
    gradient's GEMM); returns the lent `.grad` arrays of that backward."""
    lent = spy_lend(monkeypatch)
    seq.zero_grad_parameters()
    seq.forward(x)
    bwd = runtime_of(seq).last.training_pair.backward_program(0)
    kw = bwd.program.fn.__kwdefaults__
    name = "np_matmul" if "np_matmul" in kw else "tail_matmul"

    def boom(*args, **kwargs):
        raise Boom("injected")

    real = kw[name]
    monkeypatch.setitem(kw, name, boom)
    with pytest.raises(Boom):
        seq.backward(x, g)
    monkeypatch.setitem(kw, name, real)
    return lent[-1]


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_a_grad_filled_after_a_raised_backward_is_accumulated_into_not_packed_over(
    kind, monkeypatch
):
    x, g = data((T, B, H), 0)
    seq, m = _seq(OPTIONS[kind])
    _steady(seq, x, g)
    assert _raise_in_backward(seq, x, g, monkeypatch) == [m.o2g.weight.grad]
    # the user accumulates: every .grad holds something, no zero_grad_parameters
    start = {n: np.full(p.grad.shape, 0.25) for n, p in m.named_parameters().items()}
    for n, p in m.named_parameters().items():
        p.grad[...] = start[n]
    seq.forward(x)
    seq.backward(x, g)
    ref, r = _seq(OPTIONS[kind])
    _steady(ref, x, g)
    for n, p in r.named_parameters().items():
        np.testing.assert_allclose(
            m.named_parameters()[n].grad, start[n] + p.grad, rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_a_raised_backward_leaves_the_lent_grad_holding_zeros(kind, monkeypatch):
    x, g = data((T, B, H), 1)
    seq, m = _seq(OPTIONS[kind])
    _steady(seq, x, g)
    assert _raise_in_backward(seq, x, g, monkeypatch) == [m.o2g.weight.grad]
    assert not m.o2g.weight.grad.any()


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_panels_left_for_the_backward_give_the_bits_of_panels_zeroed(kind, monkeypatch):
    """Three steps with updates (and get_grad_hidden_state): every value and gradient the same
    bits whether the loop leaves its panels in the `.grad` the backward overwrites or zeroes
    them first (_within made to say no: then nothing is left)."""
    from tapernn.nn import packing

    left_calls = []  # (per backward: how many panel slots were left for it to overwrite)
    real = packing.Packing.compute_into

    def spy(self, program, first, args):
        real(self, program, first, args)
        loops = program.program.loop_scratch.values()
        left_calls.append(sum(len(dest.left) for dest, *_ in loops))

    monkeypatch.setattr(packing.Packing, "compute_into", spy)

    def run():
        seq, m = _seq(OPTIONS[kind])
        got = []
        for k in range(3):
            x, g = data((T, B, H), k)
            seq.zero_grad_parameters()
            got.append(np.array(seq.forward(x)))
            got.append(np.array(seq.backward(x, g)))
            got += [p.grad.copy() for p in m.parameters()]
            got += [np.array(s) for s in m.get_grad_hidden_state(1)]
            seq.update_parameters(0.1)
        return seq, got

    _, left = run()
    assert left_calls == [1, 1, 1]
    monkeypatch.setattr(packing, "_within", lambda a, known: False)
    _, zeroed = run()
    assert left_calls[3:] == [0, 0, 0]
    for a, b in zip(left, zeroed):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("kind", list(OPTIONS))
def test_a_forward_after_zeroing_fills_its_lent_grads_once_and_leaves_zeros(
    kind, cell, monkeypatch
):
    """zero_grad_parameters, forward, backward, update (Torch7's order: the forward lends the
    zeroed `.grad`): after each forward every `.grad` holds zeros, release_scratch refilling
    only what no loop's runner zeroed (the LSTM's transposed copy: rows of the same block);
    the values and gradients the bits of release_scratch refilling everything."""
    from tapernn.nn import packing

    seen = []
    real = packing.Packing.release_scratch

    def spy(program, used, ended=False):
        seen.append((ended, getattr(used, "panels", 0), len(used)))
        real(program, used, ended)

    def run():
        seq, m = _seq(OPTIONS[kind], cell)
        got = []
        for k in range(3):
            x, g = data((T, B, H), k)
            seq.zero_grad_parameters()
            got.append(np.array(seq.forward(x)))
            assert not any(p.grad.any() for p in m.parameters())
            got.append(np.array(seq.backward(x, g)))
            got += [p.grad.copy() for p in m.parameters()]
            seq.update_parameters(0.1)
        return got

    monkeypatch.setattr(packing.Packing, "release_scratch", staticmethod(spy))
    once = run()
    lent = 2 if cell == "LSTM" else 1  # (the LSTM: its transposed copy and its panels)
    assert seen[-1] == (True, 1, lent)  # (the steady forward: the runner zeroed the panels)
    monkeypatch.setattr(
        packing.Packing, "release_scratch", staticmethod(lambda p, used, ended=False: real(p, used))
    )
    for a, b in zip(once, run()):
        np.testing.assert_array_equal(a, b)
