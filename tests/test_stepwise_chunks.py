"""Chunk-by-chunk stepping by hand is truncated BPTT, exactly: a module stepped by hand, the same
module inside a Recursor, and inside Sequencer(remember='both') give the same outputs, gradInputs
and parameter gradients over chunks 5, 4, 5, 3, 7, 3 (Element-RNN test `Sequencer`)."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

D, H, B = 3, 4, 2
CHUNKS = (5, 4, 5, 3, 7, 3)
LR = 0.1


def recurrent():
    return nn.Recurrent(H, nn.Linear(D, H), nn.Linear(H, H), nn.Sigmoid())


def table_module():  # table in, table out, two recurrent modules in one stepped root
    return nn.Sequential(nn.ParallelTable(nn.LSTM(D, H), nn.GRU(D, H)))


MAKERS = {
    "RNN": lambda: nn.RNN(D, H),
    "Recurrent": recurrent,
    "LSTM": lambda: nn.LSTM(D, H),
    "FastLSTM": lambda: nn.FastLSTM(D, H),
    "GRU": lambda: nn.GRU(D, H),
    "table": table_module,
}


def fresh(name, seed=0):  # the parameters every runner of a test starts from
    tn.manual_seed(seed)
    return MAKERS[name]()


_POOL: dict = {}  # modules and wrappers reused across tests: their programs compile once


def twin(module, name, slot=None):
    """A module with `module`'s parameters, fresh (forgotten, training, no rho); with `slot`, a
    pooled one."""
    other = _POOL.get((name, slot)) if slot else None
    if other is None:
        other = MAKERS[name]()
        if slot:
            _POOL[name, slot] = other
    other.load_state_dict(module if isinstance(module, dict) else module.state_dict())
    return other.forget().training().max_bptt_step(None)


def wrapped(kind, module, remember="neither"):
    """A pooled Recursor or Sequencer around `module`, forgotten and training."""
    key = (kind, id(module), remember)
    if key not in _POOL:
        _POOL[key] = (
            nn.Recursor(module) if kind == "Recursor" else nn.Sequencer(module).remember(remember)
        )
    return _POOL[key].forget().training().max_bptt_step(None)


def data(name, seed=1):
    rng = np.random.default_rng(seed)
    T = sum(CHUNKS)
    xs = rng.standard_normal((T, B, D))
    gs = rng.standard_normal((T, B, H))
    if name == "table":
        return [[x, -2 * x] for x in xs], [[g, 0.5 * g] for g in gs]
    return list(xs), list(gs)


def copy(tree):
    return [copy(v) for v in tree] if isinstance(tree, list) else np.array(tree)


def by_hand(module, xs, gs, rho=None):
    """Step each chunk forward, backward in reverse, update; never forget."""
    outs, gins, pgrads, start = [], [None] * len(xs), [], 0
    for n in CHUNKS:
        if rho == "chunk":
            module.max_bptt_step(n)
        elif rho is not None:
            module.max_bptt_step(rho)
        for t in range(start, start + n):
            outs.append(copy(module.forward(xs[t])))
        module.zero_grad_parameters()
        for t in reversed(range(start, start + n)):
            gins[t] = copy(module.backward(xs[t], gs[t]))
        pgrads.append([p.grad.copy() for p in module.parameters()])
        module.update_parameters(LR)
        start += n
    return outs, gins, pgrads


def by_sequencer(module, xs, gs, as_array):
    seq = wrapped("Sequencer", module, "both")
    outs, gins, pgrads, start = [], [], [], 0
    for n in CHUNKS:
        x, g = xs[start : start + n], gs[start : start + n]
        if as_array:
            x, g = np.stack(x), np.stack(g)
        outs += list(copy(seq.forward(x)))
        seq.zero_grad_parameters()
        gins += list(copy(seq.backward(x, g)))
        pgrads.append([p.grad.copy() for p in module.parameters()])
        seq.update_parameters(LR)
        start += n
    return outs, gins, pgrads


def assert_same(a, b, what):
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), what
        for k, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{what}[{k}]")
        return
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11, err_msg=what)


def inner(module, name):
    """The recurrent modules of `module` (the table module holds two)."""
    return module.get(0).children() if name == "table" else [module]


@pytest.mark.parametrize("name", list(MAKERS))
def test_minimal_reproducer_newest_step_starts_from_zero_gradient(name):
    # step t = 0, 1, 2 with a backward after each forward: step 2's backward must not see the
    # gradient step 1's backward sent into h_0
    m = twin(fresh(name), name, "hand")
    xs, gs = data(name)
    for t in range(3):
        m.forward(xs[t])
        got = copy(m.backward(xs[t], gs[t]))
    ref = twin(m, name, "ref")
    for a, b in zip(inner(m, name), inner(ref, name)):
        b.set_initial_state(a.get_hidden_state(1))
    ref.forward(xs[2])
    assert_same(got, copy(ref.backward(xs[2], gs[2])), "step-2 gradInput")


@pytest.mark.parametrize(
    "name,rho",
    [(name, None) for name in MAKERS]
    + [("LSTM", "chunk"), ("table", "chunk"), ("RNN", 7), ("GRU", 7)],
)
def test_chunks_by_hand_equal_recursor_and_sequencer(name, rho):
    base = fresh(name)
    xs, gs = data(name)
    hand = by_hand(twin(base, name, "hand"), xs, gs, rho)
    rec = by_hand(wrapped("Recursor", twin(base, name, "rec")), xs, gs, rho)
    seq = by_sequencer(twin(base, name, "seq"), xs, gs, as_array=False)
    for other, label in ((rec, "Recursor"), (seq, "Sequencer")):
        for part, what in zip(range(3), ("outputs", "gradInputs", "parameter gradients")):
            assert_same(hand[part], other[part], f"{name} rho={rho}: hand vs {label} {what}")


@pytest.mark.parametrize("name", ["RNN", "LSTM"])
def test_chunks_through_a_sequencer_of_arrays_equal_by_hand(name):
    base = fresh(name)
    xs, gs = data(name)
    hand = by_hand(twin(base, name, "hand"), xs, gs)
    seq = by_sequencer(twin(base, name, "seq-array"), xs, gs, as_array=True)
    for part in range(3):
        assert_same(hand[part], seq[part], f"{name} (T, B, D) part {part}")


@pytest.mark.parametrize("name", ["Recurrent", "LSTM", "table"])
def test_chunks_equal_fresh_module_started_from_the_chunk_start_state(name):
    """The independent definition of truncated BPTT: each chunk is a module started afresh from
    the state the previous chunk ended in, with the parameters reached so far."""
    base = fresh(name)
    xs, gs = data(name)
    hand = by_hand(twin(base, name, "hand"), xs, gs)
    params, start, state = base.state_dict(), 0, None
    for c, n in enumerate(CHUNKS):
        ref = twin(params, name, "ref")
        seq = wrapped("Sequencer", ref)
        for k, r in enumerate(inner(ref, name)):
            if state is not None:
                r.set_initial_state(state[k])
        out = seq.forward(xs[start : start + n])
        ref.zero_grad_parameters()
        gin = seq.backward(xs[start : start + n], gs[start : start + n])
        assert_same(copy(out), hand[0][start : start + n], f"{name} chunk {c} outputs")
        assert_same(copy(gin), hand[1][start : start + n], f"{name} chunk {c} gradInputs")
        assert_same([p.grad for p in ref.parameters()], hand[2][c], f"{name} chunk {c} grads")
        # carry on: the next chunk starts where this one ended, parameters updated
        state = [r.get_hidden_state(-1) for r in inner(ref, name)]
        ref.update_parameters(LR)
        params = ref.state_dict()
        start += n


@pytest.mark.parametrize("name", ["RNN", "Recurrent", "LSTM", "table"])
def test_evaluation_chunks_then_training_chunks(name):
    base = fresh(name)
    xs, gs = data(name)
    full = wrapped("Sequencer", twin(base, name, "full")).evaluate().forward(xs)
    hand = twin(base, name, "hand").evaluate()
    rec = wrapped("Recursor", twin(base, name, "rec")).evaluate()
    seq = wrapped("Sequencer", twin(base, name, "seq"), "both").evaluate()
    got_hand = [copy(hand.forward(x)) for x in xs]
    got_rec = [copy(rec.forward(x)) for x in xs]
    got_seq, start = [], 0
    for n in CHUNKS:
        got_seq += copy(seq.forward(xs[start : start + n]))
        start += n
    for got, label in ((got_hand, "hand"), (got_rec, "Recursor"), (got_seq, "Sequencer")):
        assert_same(got, copy(full), f"{name} evaluation {label}")
    # evaluation then training: forget, switch, and the chunks are truncated BPTT again
    for m in (hand, rec):
        m.forget().training()
    seq.training()
    expected = by_hand(twin(base, name, "expected"), xs, gs)
    assert_same(list(by_hand(hand, xs, gs)), list(expected), f"{name} eval->train by hand")
    assert_same(list(by_hand(rec, xs, gs)), list(expected), f"{name} eval->train Recursor")
    got = by_sequencer(seq.get(0), xs, gs, as_array=False)
    assert_same(list(got), list(expected), f"{name} eval->train Sequencer")


def test_chunks_in_float32_by_hand_equal_sequencer():
    base = fresh("LSTM")
    xs, gs = data("LSTM")
    xs32, gs32 = [x.astype(np.float32) for x in xs], [g.astype(np.float32) for g in gs]
    hand = by_hand(twin(base, "LSTM").float(), xs32, gs32)
    seq = by_sequencer(twin(base, "LSTM").float(), xs32, gs32, as_array=False)
    assert hand[0][0].dtype == np.float32 and hand[2][0][0].dtype == np.float32
    for part in range(3):
        for a, b in zip(hand[part], seq[part]):
            for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
                np.testing.assert_allclose(u, v, rtol=2e-5, atol=2e-6)
