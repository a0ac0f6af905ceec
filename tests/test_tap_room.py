"""get_grad_hidden_state's copies in the consumed gate rows (issue 19): after a plain Sequencer
backward, the copies of the call's arguments and output gradient (kept for a lazy
get_grad_hidden_state) are written into the leading bytes of the forward's saved slab that
the backward consumed (its dZ rows over the gate rows: TrainingPair.tap_room), not into new
memory. Structure (the copies are views of the slab `output` lives in, disjoint from it; the
report counts only the others) and equivalence: get_grad_hidden_state after the input and
output-gradient buffers are refilled and the parameters updated equals complex-step NumPy
equations (float64, 1e-12), on both backends and both backward paths (general, steady)."""

import numpy as np
import pytest

from tapernn import PlanOptions, nn
from tapernn.nn.runtime import runtime_of
from tapernn.nn.state_grads import tap_copy_bytes, tap_places
from tests import cell_reference as ref
from tests.sizes import ROOM_B, ROOM_H, ROOM_T

H, T, B = ROOM_H, ROOM_T, ROOM_B  # (T*B >= 4H + 3: every copy fits in the T*B*4H gate rows)
STEPS = {
    "FastLSTM": (lambda: nn.FastLSTM(H, H), ref.fastlstm_step),
    "LSTM": (lambda: nn.LSTM(H, H), ref.lstm_step),
    "LSTM(peephole=False)": (
        lambda: nn.LSTM(H, H, peephole=False),
        lambda p, x, h, c: ref.lstm_step(p, x, h, c, peephole=False),
    ),
}


def _root(a):
    while a.base is not None:
        a = a.base
    return a


def _data(seed, t=T, b=B, h=H):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((t, b, h)), rng.standard_normal((t, b, h))


def _copies(cell_module):
    """The arguments and seeds a pending get_grad_hidden_state holds (state_grads.tap_later)."""
    pending = cell_module.__dict__["_grad_hidden"]
    assert callable(pending)
    return list(pending.args[4]) + list(pending.args[5])


def _state_grads(step, params, x, g, t):
    return ref.complex_step_state_grads(step, params, x, g, t, H)


def test_tap_places_puts_the_largest_first_where_they_fit():
    assert tap_places([100, 300, 50], 512) == {1: 0, 0: 320, 2: 448}
    assert tap_places([100, 300, 50], 400) == {1: 0, 2: 320}  # 100 does not fit after 300
    assert tap_places([10, 0], 0) == {}


@pytest.mark.parametrize("cell", list(STEPS))
def test_the_copies_lie_in_the_consumed_gate_rows(cell):
    """Every copy (the input, each parameter, the output gradient) is a view of the saved slab
    `output` is a view of, disjoint from `output`, on the general path (call 1) and the steady
    one (calls 2-3); the compile report counts no copy bytes (tap_copy_bytes 0). Without
    dz_in_gates (no consumed rows) they are fresh arrays and counted."""
    seq = nn.Sequencer(STEPS[cell][0]())
    seq.set_plan_options(PlanOptions(tap_room_min_bytes=0, backend="numpy", dz_in_gates=True))
    x, g = _data(0)
    for _ in range(3):
        out = seq.forward(x)
        seq.backward(x, g)
        copies = _copies(seq.module)
        assert len(copies) > 3
        for c in copies:
            assert _root(c) is _root(out) and not np.shares_memory(c, out)
        assert tap_copy_bytes(runtime_of(seq).history[-1].exe) == 0
    plain = nn.Sequencer(STEPS[cell][0]())
    plain.set_plan_options(PlanOptions(tap_room_min_bytes=0, backend="numpy", dz_in_gates=False))
    out = plain.forward(x)
    plain.backward(x, g)
    assert all(_root(c) is not _root(out) for c in _copies(plain.module))
    assert tap_copy_bytes(runtime_of(plain).history[-1].exe) == sum(
        c.nbytes for c in _copies(plain.module)
    )


@pytest.mark.parametrize("grad_input", [True, False])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("cell", list(STEPS))
def test_grad_hidden_state_after_refill_and_update_equals_numpy(cell, backend, grad_input):
    """Three steps of a training loop over one input and one output-gradient buffer (refilled
    in place after each backward) with an update after each: get_grad_hidden_state, read after
    the refill and the update, is the gradient of what that backward saw (NumPy equations).
    The forward's output is unchanged by the copies."""
    make, step = STEPS[cell]
    m = make()
    seq = nn.Sequencer(m).set_plan_options(PlanOptions(tap_room_min_bytes=0, backend=backend))
    x, g = np.empty((T, B, H)), np.empty((T, B, H))
    for k in range(3):
        x[...], g[...] = _data(k)
        params = {name: p.data.copy() for name, p in m.named_parameters().items()}
        want_out, _ = ref.run(step, params, x, 2, H)
        seen = (x.copy(), g.copy())
        out = seq.forward(x)
        seq.backward(x, g, need_grad_input=grad_input)
        x[...], g[...] = _data(10 + k)
        seq.update_parameters(0.5)
        np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
        for t in (0, 2, T - 2):
            want = _state_grads(step, params, *seen, t)
            for got, w in zip(m.get_grad_hidden_state(t), want):
                np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)


def test_a_second_backward_of_one_forward_keeps_its_own_copies():
    """Two backwards of one forward (the second re-runs the forward: a new slab) then an
    update: get_grad_hidden_state is the second call's (the same values), and the gradients
    add up."""
    make, step = STEPS["FastLSTM"]
    m = make()
    seq = nn.Sequencer(m).set_plan_options(PlanOptions(tap_room_min_bytes=0, backend="numpy"))
    x, g = _data(3)
    params = {name: p.data.copy() for name, p in m.named_parameters().items()}
    seq.zero_grad_parameters()
    seq.forward(x)
    seq.backward(x, g)
    once = [p.grad.copy() for p in m.parameters()]
    seq.backward(x, g)
    for p, o in zip(m.parameters(), once):
        np.testing.assert_allclose(p.grad, 2 * o, rtol=1e-12, atol=1e-12)
    seq.update_parameters(0.5)
    for got, w in zip(m.get_grad_hidden_state(1), _state_grads(step, params, x, g, 1)):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)


def test_numba_large_loop_puts_the_copies_in_the_rows_too():
    """On numba a loop with body values above LOOP_MAX_SIZE runs on the Python runner and is
    donated (hpeak5): its copies that fit go into the consumed rows as on NumPy, with the same
    get_grad_hidden_state as without the donation."""
    h, b = 342, 3  # (B * 4H = 4104 > 4096)
    x, g = _data(5, t=3, b=b, h=h)
    got = {}
    for donate in (True, False):
        m = nn.FastLSTM(h, h)
        for p in m.parameters():
            p.data[...] = np.random.default_rng(len(p.data.shape)).standard_normal(p.shape) * 0.1
        seq = nn.Sequencer(m).set_plan_options(
            PlanOptions(tap_room_min_bytes=0, backend="numba", dz_in_gates=donate)
        )
        out = seq.forward(x)
        seq.backward(x, g)
        placed = [_root(c) is _root(out) for c in _copies(m)]
        assert any(placed) == donate  # (x and g fit; the weights do not)
        seq.update_parameters(0.5)
        got[donate] = [m.get_grad_hidden_state(t) for t in range(2)]
    for a, b_ in zip(got[True], got[False]):
        for u, v in zip(a, b_):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", list(STEPS))
def test_remembered_chunks_read_the_same_state_gradients(cell):
    """remember("both"), three chunks of lengths T, T - 1, T, each followed by a refill and an
    update: get_grad_hidden_state (and the outputs) as without the donation (copies in new
    memory), at 1e-12."""

    def run(donate):
        m = STEPS[cell][0]()
        for k, p in enumerate(m.parameters()):
            p.data[...] = np.random.default_rng(k).standard_normal(p.shape) * 0.3
        seq = nn.Sequencer(m).remember("both")
        seq.set_plan_options(PlanOptions(tap_room_min_bytes=0, backend="numpy", dz_in_gates=donate))
        got = []
        for k, t in enumerate((T, T - 1, T)):
            x, g = (a.copy() for a in _data(k, t=t))
            got.append(np.array(seq.forward(x)))
            seq.backward(x, g)
            x[...], g[...] = 0, 0
            seq.update_parameters(0.1)
            got += [s for u in range(t - 1) for s in m.get_grad_hidden_state(u)]
        return got

    want = run(False)
    got = run(True)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["FastLSTM", "LSTM"])
def test_a_remembered_chunk_of_a_cached_length_reads_its_state_gradients(cell):
    """remember("both") over chunks of lengths T, T - 1, T: the third (rolled, its length's
    template cached by the first) names its state inputs "state.h0" where the unrolled variant
    says "0.h0"; get_grad_hidden_state raised TapernnError (the variant's inputs did not
    match). Now the inputs bind in order, and the values equal unroll=True's at 1e-12."""

    def run(unroll):
        m = STEPS[cell][0]()
        for k, p in enumerate(m.parameters()):
            p.data[...] = np.random.default_rng(k).standard_normal(p.shape) * 0.3
        seq = nn.Sequencer(m, unroll=unroll).remember("both")
        seq.set_plan_options(PlanOptions(tap_room_min_bytes=0, backend="numpy"))
        got = []
        for k, t in enumerate((T, T - 1, T)):
            x, g = _data(k, t=t)
            got.append(np.array(seq.forward(x)))
            seq.backward(x, g)
            seq.update_parameters(0.1)
            got += [s for u in range(t - 1) for s in m.get_grad_hidden_state(u)]
        return got

    want, got = run(True), run(False)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["FastLSTM", "LSTM"])
def test_a_room_under_tap_room_min_bytes_is_not_used_and_the_answers_are_the_same(cell):
    """PlanOptions.tap_room_min_bytes (default 64 KiB): a slab's dead rows smaller than that
    take no copies (placing them cost 5 us of a 20 us (1, 5, 5) numba step): fresh copies,
    counted by the report, and get_grad_hidden_state equal to the placed copies' at 1e-12
    (float64) after the buffers are refilled and the parameters updated."""
    x, g = _data(0)
    got = {}
    for low in (0, 1 << 16):
        seq = nn.Sequencer(STEPS[cell][0]())
        seq.set_plan_options(PlanOptions(backend="numpy", tap_room_min_bytes=low))
        grads = []
        for _ in range(3):  # (the general path, then the steady one)
            xs, gs = x.copy(), g.copy()
            out = seq.forward(xs)
            seq.backward(xs, gs)
            copies = _copies(seq.module)
            in_room = [_root(c) is _root(out) for c in copies]
            exe = runtime_of(seq).history[-1].exe
            if low:  # (the room of these shapes: 12 KiB of gate rows)
                assert not any(in_room)
                assert tap_copy_bytes(exe) == sum(c.nbytes for c in copies)
            else:
                assert all(in_room) and tap_copy_bytes(exe) == 0
            xs[...] = 7.0
            gs[...] = -3.0
            seq.update_parameters(0.1)
            grads.append([np.array(s) for s in seq.module.get_grad_hidden_state(T - 1)])
        got[low] = grads
    for a, b in zip(got[0], got[1 << 16]):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
