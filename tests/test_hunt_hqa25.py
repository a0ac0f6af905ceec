"""QA hunt on stop 46's features (hqa25): Dropout's settings changed after construction are
checked at the next call (a `d.p = 1.0` raised ZeroDivisionError from the mask's binder, a NaN p
gave NaN outputs silently, an `rng` that is no generator an AttributeError); and combinations
the rolled loops' masks had no test for, each rolled == unroll=True for one seed: Dropouts
outside and inside two stacked Sequencers drawing from one user generator, and
set_grad_hidden_state on a stacked model and on a BiSequencer's reverse loop. NumPy backend
only (~5 s at load 7)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

T, B, D, H = 5, 3, 4, 6


def rolled(model) -> bool:
    return any(": rolled:" in n for n in model.compile_report().notes)


def dropout_model():
    drop = nn.Dropout(0.5)
    return drop, nn.Sequencer(drop)


@pytest.mark.parametrize("p", [1.0, float("nan"), -0.5])
def test_a_dropout_p_set_after_construction_is_checked(p):
    # the constructor refuses these; set later, the loop's mask scaled by 1 / (1 - p) raised
    # ZeroDivisionError at bind (p = 1) or drew NaN masks: NaN outputs, silently (p = nan).
    # (hset: refused at the assignment itself, nn.settings; tests/test_hset_settings.py)
    drop, seq = dropout_model()
    x = np.ones((T, B, D))
    seq.forward(x)
    with pytest.raises(tn.ArgumentError, match=r"nn.Dropout: p must be in \[0, 1\)"):
        drop.p = p
    drop.p = 0.25  # (and the model runs again once p is right)
    assert np.isfinite(seq.forward(x)).all()


def test_a_dropout_rng_set_after_construction_is_checked():
    # read at each call (so a generator set later is used): anything else raised
    # AttributeError "'int' object has no attribute 'random'" from the mask's binder
    drop, seq = dropout_model()
    x = np.random.default_rng(0).standard_normal((T, B, D)) + 3.0
    seq.forward(x)
    seq.forward(x)  # (the steady path: no trace reads drop.rng again)
    with pytest.raises(tn.ArgumentTypeError, match="nn.Dropout: rng must be a numpy"):
        drop.rng = 5  # (hset: refused at the assignment itself)
    drop.rng = np.random.default_rng(7)
    y = seq.forward(x)
    draws = np.random.default_rng(7)
    want = np.stack([x[t] * (draws.random((B, D)) >= 0.5) * 2.0 for t in range(T)])
    np.testing.assert_allclose(y, want, rtol=1e-15, atol=0)


def train_calls(model, xs, hook=None):
    """Outputs, input gradients, parameter gradients (and what `hook` adds) of training calls."""
    model.set_plan_options(tn.PlanOptions(backend="numpy"))
    tn.manual_seed(11)
    got = []
    for x in xs:
        y = model.forward(x)
        model.zero_grad_parameters()
        extra = hook() if hook else []
        gx = model.backward(x, np.cos(np.asarray(y)))
        got.append([np.array(y), np.array(gx)] + [p.grad.copy() for p in model.parameters()])
        got[-1] += [np.array(v) for v in (extra() if callable(extra) else [])]
    return got


def assert_same(a, b):
    for k, (u, v) in enumerate(zip(a, b)):
        assert len(u) == len(v)
        for j, (p, q) in enumerate(zip(u, v)):
            np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-12, err_msg=f"call {k}, {j}")


def stacked(unroll):
    """Dropouts before, between and after two loops, one user generator shared by two of
    them in different loops; returns the model and its two recurrent cells."""
    tn.manual_seed(3)
    shared = np.random.default_rng(5)
    first, second = nn.LSTM(D, H), nn.GRU(H, H)
    model = nn.Sequential(
        nn.Dropout(0.1),
        nn.Sequencer(
            nn.Sequential(nn.Dropout(0.3, rng=shared), first, nn.Dropout(0.5)), unroll=unroll
        ),
        nn.Dropout(0.2),
        nn.Sequencer(
            nn.Sequential(second, nn.Dropout(0.25, rng=shared), nn.Linear(H, H)), unroll=unroll
        ),
    )
    return model, [first, second]


def bidirectional(unroll):
    tn.manual_seed(4)
    fwd, bwd = nn.GRU(D, H), nn.LSTM(D, H)
    model = nn.BiSequencer(
        nn.Sequential(nn.Dropout(0.5), fwd, nn.Dropout(0.2)),
        nn.Sequential(nn.Dropout(0.4), bwd, nn.Dropout(0.3)),
        unroll=unroll,
    )
    return model, [fwd, bwd]


def test_stacked_loops_sharing_a_generator_draw_the_unrolled_masks():
    xs = [np.random.default_rng(k).standard_normal((t, B, D)) for k, t in enumerate((T, 7, 3))]
    (a, _), (b, _) = stacked(False), stacked(True)
    r, u = train_calls(a, xs), train_calls(b, xs)
    assert rolled(a) and not rolled(b)
    assert_same(r, u)


@pytest.mark.parametrize("make", [stacked, bidirectional])
@pytest.mark.parametrize("cell", [0, 1])
def test_set_grad_hidden_state_with_masks_in_several_loops(make, cell):
    # the variant program takes the rolled call's masks by the unrolled draws' names
    # (nn.step_draws.per_step): with two loops (one reverse) every name must land on its row
    xs = [np.random.default_rng(k).standard_normal((T, B, D)) for k in range(3)]
    got = []
    for unroll in (False, True):
        model, cells = make(unroll)
        c = cells[cell]

        def hook(c=c):
            grads = [np.full((B, H), 0.1 * (j + 1)) for j in range(len(c.state_names))]
            c.set_grad_hidden_state(2, grads)
            return lambda: c.get_grad_hidden_state(1)

        got.append(train_calls(model, xs, hook))
        assert rolled(model) != unroll
    assert_same(*got)
