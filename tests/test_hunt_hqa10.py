"""QA round hqa10: regression tests for what it found and for hqa9's leftovers (Torch7's BCE
gradient, Torch7's tie rule in Max/Min/CMaxTable/CMinTable, a recurrent module's `output`
inside a Sequencer)."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

EPS = 1e-12


# ---- BCECriterion: Torch7's input gradient -(y - x) / ((1 - x + eps)(x + eps)), 0 at x == y ----


def _torch7_bce(x, y, w, size_average):
    """THNN's BCECriterion_updateOutput / updateGradInput, written out."""
    w = 1.0 if w is None else w
    n = x.size if size_average else 1
    loss = -np.sum(w * (y * np.log(x + EPS) + (1 - y) * np.log(1 - x + EPS))) / n
    return loss, -w * (y - x) / ((1 - x + EPS) * (x + EPS)) / n


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("size_average", [True, False])
def test_bce_gradient_is_torch7s_closed_form_zero_at_a_perfect_prediction(weighted, size_average):
    x = np.array([[0.0, 1.0, 0.3, 1.0], [0.0, 0.7, 1e-9, 0.5]])
    y = np.array([[0.0, 1.0, 1.0, 0.0], [1.0, 0.7, 0.0, 0.5]])
    w = np.array([1.0, 2.0, 0.5, 3.0]) if weighted else None
    c = nn.BCECriterion(w, size_average=size_average)
    loss, g = c.forward(x, y), c.backward(x, y)
    want_loss, want_g = _torch7_bce(x, y, w, size_average)
    assert loss == pytest.approx(want_loss, rel=1e-15)
    np.testing.assert_allclose(g, want_g, rtol=1e-15, atol=0)
    assert g[0, 0] == 0 and g[0, 1] == 0 and g[1, 1] == 0  # x == y exactly: no gradient


def test_bce_gradient_matches_torch_at_perfect_predictions():
    torch = pytest.importorskip("torch")
    x = np.array([0.0, 1.0, 0.0, 1.0, 0.25])
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.binary_cross_entropy(t, torch.tensor(y)).backward()
    g = nn.BCECriterion().backward(x, y)
    np.testing.assert_allclose(g[:4], t.grad.numpy()[:4], atol=0)
    np.testing.assert_allclose(g[4], t.grad.numpy()[4], rtol=1e-10)


def test_bce_inside_sequencer_and_mask_zero_criteria_has_torch7s_gradient(backend):
    rng = np.random.default_rng(2)
    x = rng.uniform(0.05, 0.95, (3, 2, 4))
    y = (rng.uniform(size=x.shape) > 0.5).astype(float)
    x[0, 0] = y[0, 0]  # perfect predictions on one row
    c = nn.SequencerCriterion(nn.BCECriterion())
    loss, g = c.forward(x, y), c.backward(x, y)
    want = [_torch7_bce(x[t], y[t], None, True) for t in range(3)]
    assert loss == pytest.approx(sum(v[0] for v in want), rel=1e-14)
    np.testing.assert_allclose(g, np.stack([v[1] for v in want]), rtol=1e-14, atol=0)
    assert not g[0, 0].any()


def test_bce_gradients_agree_with_finite_differences_inside_the_interval():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0.1, 0.9, (3, 4)), rng.uniform(0, 1, (3, 4))
    w = rng.uniform(0.5, 2, 4)
    c = nn.BCECriterion(w)
    c.forward(x, y)
    g = c.backward(x, y)
    fd = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = 1e-6
        fd[i] = (c.forward(x + d, y) - c.forward(x - d, y)) / 2e-6
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_bce_used_symbolically_still_differentiates_the_target():
    """The closed-form input gradient must not cut the target's (a target computed by the
    model, e.g. two outputs compared): d/dy = -(log(x + eps) - log(1 - x + eps)) / N."""

    class Compare(nn.Module):
        def __init__(self):
            super().__init__()
            self.crit = nn.BCECriterion()

        def build(self, xs):
            return self.crit(xs[0], xs[1])

    rng = np.random.default_rng(4)
    x, y = rng.uniform(0.1, 0.9, (2, 3)), rng.uniform(0.1, 0.9, (2, 3))
    m = Compare()
    m.forward([x, y])
    gx, gy = m.backward([x, y], np.ones(()))
    _, want_x = _torch7_bce(x, y, None, True)
    np.testing.assert_allclose(gx, want_x, rtol=1e-14)
    np.testing.assert_allclose(gy, -(np.log(x + EPS) - np.log(1 - x + EPS)) / x.size, rtol=1e-14)


# ---- Max / Min / CMaxTable / CMinTable: a tie's gradient all to the first entry (Torch7) ----


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "cls, reduce, arg", [(nn.Max, np.max, np.argmax), (nn.Min, np.min, np.argmin)]
)
def test_max_and_min_give_a_ties_gradient_to_the_first_entry(backend, dtype, cls, reduce, arg):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, size=(4, 5, 3)).astype(dtype)  # many ties
    for d in range(3):
        m = cls(d).astype(dtype)
        for _ in range(3):  # (the steady path too)
            y = m.forward(x)
            g = rng.standard_normal(y.shape).astype(dtype)
            gx = m.backward(x, g)
        want = np.zeros_like(x)
        np.put_along_axis(want, np.expand_dims(arg(x, d), d), np.expand_dims(g, d), d)
        np.testing.assert_array_equal(y, reduce(x, d))
        np.testing.assert_array_equal(gx, want)
        assert y.dtype == gx.dtype == dtype


def test_max_and_min_values_keep_nan_and_infinities():
    a = np.array([[1.0, 2.0, np.nan, -np.inf], [3.0, 3.0, 1.0, -np.inf]])
    np.testing.assert_array_equal(nn.Max(1).forward(a), [np.nan, 3.0])
    np.testing.assert_array_equal(nn.Min(1).forward(a), [np.nan, -np.inf])
    np.testing.assert_array_equal(nn.Max(0).forward(a), [3.0, 3.0, np.nan, -np.inf])


def test_max_gradient_agrees_with_finite_differences_without_ties():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4))
    for m in (nn.Max(1), nn.Min(0), nn.CMaxTable(), nn.CMinTable()):
        arg = list(x[:2]) if isinstance(m, (nn.CMaxTable, nn.CMinTable)) else x
        y = m.forward(arg)
        g = rng.standard_normal(y.shape)
        got = np.asarray(m.backward(arg, g))
        flat = np.asarray(arg).copy()
        fd = np.zeros_like(flat)
        for i in np.ndindex(flat.shape):
            d = np.zeros_like(flat)
            d[i] = 1e-6
            up, down = (
                (list(flat + d), list(flat - d)) if isinstance(arg, list) else (flat + d, flat - d)
            )
            fd[i] = np.sum(g * (m.forward(up) - m.forward(down))) / 2e-6
        np.testing.assert_allclose(got, fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "cls, fn, arg", [(nn.CMaxTable, np.maximum, np.argmax), (nn.CMinTable, np.minimum, np.argmin)]
)
def test_cmax_cmin_table_give_a_ties_gradient_to_the_first_entry(backend, cls, fn, arg):
    rng = np.random.default_rng(7)
    xs = list(rng.integers(0, 3, size=(3, 4, 5)).astype(float))
    m = cls()
    for _ in range(3):
        y = m.forward(xs)
        g = rng.standard_normal(y.shape)
        gs = m.backward(xs, g)
    np.testing.assert_array_equal(y, fn(fn(xs[0], xs[1]), xs[2]))
    first = arg(np.stack(xs), 0)
    for k in range(3):
        np.testing.assert_array_equal(gs[k], np.where(first == k, g, 0))


def test_cmax_table_keeps_a_nan_from_any_entry():
    out = nn.CMaxTable().forward([np.array([np.nan, 1.0, 2.0]), np.array([1.0, np.nan, 3.0])])
    np.testing.assert_array_equal(out, [np.nan, np.nan, 3.0])
    out = nn.CMinTable().forward([np.array([np.nan, 1.0, 2.0]), np.array([1.0, np.nan, 3.0])])
    np.testing.assert_array_equal(out, [np.nan, np.nan, 2.0])


def test_max_inside_a_sequencer_gives_a_ties_gradient_to_the_first_entry(backend):
    x = np.tile(np.array([[1.0, 4.0, 4.0, 2.0]]), (5, 2, 1))
    seq = nn.Sequencer(nn.Max(0, 1))  # (dim 0 of a row: past the batch dim)
    y = seq.forward(x)
    gx = seq.backward(x, np.ones_like(y))
    np.testing.assert_array_equal(y, np.full((5, 2), 4.0))
    np.testing.assert_array_equal(gx, np.broadcast_to([0.0, 1.0, 0.0, 0.0], x.shape))


# ---- a recurrent module's `output` inside a Sequencer: the last step's (Torch7's field) ----


@pytest.mark.parametrize(
    "make", [lambda: nn.LSTM(3, 4), lambda: nn.GRU(3, 4), lambda: nn.FastLSTM(3, 4)]
)
def test_a_recurrent_modules_output_inside_a_sequencer_is_its_last_steps(backend, make):
    rng = np.random.default_rng(8)
    cell = make()
    seq = nn.Sequencer(cell)
    for T in (5, 2, 5):  # (new lengths, the steady path)
        x = rng.standard_normal((T, 2, 3))
        y = seq.forward(x)
        seq.backward(x, np.ones_like(y))
        np.testing.assert_array_equal(cell.output, y[-1])
        assert cell.output is cell.outputs[-1]
    seq.evaluate()
    y = seq.forward(x)
    np.testing.assert_array_equal(cell.output, y[-1])


def test_recurrent_outputs_inside_a_stack_and_a_container_stepped_by_hand(backend):
    rng = np.random.default_rng(9)
    lstm, gru = nn.LSTM(3, 4), nn.GRU(4, 2)
    stack = nn.Sequential().add(lstm).add(nn.Dropout(0.0)).add(gru)
    seq = nn.Sequencer(stack)
    x = rng.standard_normal((4, 2, 3))
    y = seq.forward(x)
    np.testing.assert_array_equal(gru.output, y[-1])
    np.testing.assert_array_equal(lstm.output, lstm.outputs[3])
    seq.forget()
    stepped = nn.Sequential().add(nn.LSTM(3, 4)).add(nn.Linear(4, 2))
    for t in range(3):
        stepped.forward(x[t])
        np.testing.assert_array_equal(stepped.get(0).output, stepped.get(0).outputs[t])


def test_a_cell_overriding_output_with_super_still_works_and_reads_its_field():
    class Doubled(nn.Cell):
        state_names = ("h",)

        def __init__(self, n_in, n_h):
            super().__init__(n_in, n_h)
            self.w = self.parameter("w", (n_in + n_h, n_h))

        def step(self, x, h):
            return tn.tanh(tn.concat([x, h], axis=-1) @ self.w)

        def output(self, h):
            return super().output(h) * 2.0

    rng = np.random.default_rng(10)
    cell = Doubled(3, 4)
    x = rng.standard_normal((3, 2, 3))
    y = nn.Sequencer(cell).forward(x)
    np.testing.assert_array_equal(cell.output, y[-1])
    h = np.zeros((2, 4))
    for t in range(3):
        h = np.tanh(np.concatenate([x[t], h], -1) @ cell.w.data)
    # (1e-12: the backends' agreement; numba's tanh is not np.tanh's to the last bit, and an
    # unseeded w made 1e-14 fail about one run in ten on numba)
    np.testing.assert_allclose(y[-1], 2 * h, rtol=1e-12)
    stepped = Doubled(3, 4)
    out = stepped.forward(x[0])
    np.testing.assert_array_equal(stepped.output, out)


def test_a_recurrent_modules_output_survives_deepcopy_and_forget():
    lstm = nn.LSTM(3, 4)
    seq = nn.Sequencer(lstm)
    y = seq.forward(np.ones((3, 2, 3)))
    twin = copy.deepcopy(seq)
    np.testing.assert_array_equal(twin.get(0).output, y[-1])
    out = lstm.forward(np.ones((2, 3)))  # a step by hand after the sequence (memory kept)
    np.testing.assert_array_equal(lstm.output, out)
    lstm.forget()
    np.testing.assert_array_equal(lstm.output, out)  # stepped by itself: forget() leaves it
    inner = nn.LSTM(3, 4)
    wrapped = nn.Sequencer(inner)
    wrapped.forward(np.ones((3, 2, 3)))
    wrapped.forget()
    assert inner.output is None  # inside a Sequencer: made from the cleared steps (documented)
    assert nn.LSTM(3, 4).output is None  # nothing run yet


# ---- gradients at exactly 0: SoftPlus, LogSigmoid, ELU (wrong before), Sqrt and Abs (Torch7) ----

KINKS = np.array([-3.0, -1.0, -0.0, 0.0, 1e-300, 0.5, 2.0, 25.0, -800.0, 800.0])


def _grad(m, x, dtype=np.float64):
    m = m.astype(dtype)
    x = x.astype(dtype)
    y = m.forward(x)
    return y, m.backward(x, np.ones_like(y))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softplus_logsigmoid_elu_have_their_derivative_at_zero(backend, dtype):
    """softplus'(0) = sigmoid(0) = 1/2 and (log sigmoid)'(0) = 1/2 (both smooth), ELU'(0) =
    alpha (Torch7's and PyTorch's x <= 0 branch; smooth for alpha = 1): autodiff of relu/abs/
    minimum pieces gave 0, 0 and alpha / 2 there."""
    x = KINKS.astype(dtype).astype(np.float64)  # (1e-300 is 0 in float32)
    sig = 1 / (1 + np.exp(-np.clip(x, -700, 700)))
    for m, want_y, want_g in [
        (nn.SoftPlus(), np.logaddexp(0, x), sig),
        (
            nn.SoftPlus(2.0),
            np.logaddexp(0, 2 * x) / 2,
            1 / (1 + np.exp(-np.clip(2 * x, -700, 700))),
        ),
        (nn.LogSigmoid(), -np.logaddexp(0, -x), 1 - sig),
        (
            nn.ELU(),
            np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
            np.where(x > 0, 1, np.exp(np.minimum(x, 0))),
        ),
        (
            nn.ELU(0.5),
            np.where(x > 0, x, 0.5 * np.expm1(np.minimum(x, 0))),
            np.where(x > 0, 1, 0.5 * np.exp(np.minimum(x, 0))),
        ),
    ]:
        y, g = _grad(m, x, dtype)
        tol = 1e-12 if dtype == np.float64 else 1e-6
        if isinstance(m, nn.SoftPlus):  # (Torch7's threshold 20: linear above, gradient 1)
            lin = x * m.beta > m.threshold
            want_y, want_g = np.where(lin, x, want_y), np.where(lin, 1.0, want_g)
        np.testing.assert_allclose(y, want_y, rtol=tol, atol=tol, err_msg=repr(m))
        np.testing.assert_allclose(g, want_g, rtol=tol, atol=tol, err_msg=repr(m))
        assert g[3] == pytest.approx(want_g[3], rel=1e-6)  # x = 0 exactly


def test_softplus_logsigmoid_elu_match_torch_at_zero():
    torch = pytest.importorskip("torch")
    x = np.array([-1.0, 0.0, 1.0])
    for m, f in [
        (nn.SoftPlus(), torch.nn.functional.softplus),
        (nn.LogSigmoid(), torch.nn.functional.logsigmoid),
        (nn.ELU(0.7), lambda t: torch.nn.functional.elu(t, 0.7)),
    ]:
        t = torch.tensor(x, requires_grad=True)
        f(t).sum().backward()
        np.testing.assert_allclose(_grad(m, x)[1], t.grad.numpy(), rtol=1e-15, err_msg=repr(m))


def test_sqrt_and_abs_take_torch7s_gradient_at_zero(backend):
    """Torch7's nn.Sqrt gives 0 where the output is 0 (THNN), not inf; nn.Abs gives +1 at 0."""
    x = np.array([0.0, -0.0, 4.0, 0.25])
    y, g = _grad(nn.Sqrt(), x)
    np.testing.assert_array_equal(y, np.sqrt(x))
    np.testing.assert_array_equal(g, [0.0, 0.0, 0.25, 1.0])
    y, g = _grad(nn.Abs(), np.array([-2.0, -0.0, 0.0, 3.0]))
    np.testing.assert_array_equal(y, [2.0, 0.0, 0.0, 3.0])  # (-0.0 == 0.0: its sign stays)
    np.testing.assert_array_equal(g, [-1.0, 1.0, 1.0, 1.0])


def test_sqrt_of_a_distance_has_no_nan_gradient_where_the_distance_is_zero(backend):
    """sqrt(|a - b|) at a == b (MuFuRu's sqrt_diff, or nn.Sequential(CSubTable, Abs, Sqrt)):
    inf * 0 gave NaN, which an update spreads into every parameter."""
    m = nn.Sequential().add(nn.CSubTable()).add(nn.Abs()).add(nn.Sqrt())
    a = np.array([[1.0, 2.0], [3.0, 3.0]])
    b = np.array([[1.0, 1.0], [3.0, 7.0]])
    y = m.forward([a, b])
    ga, gb = m.backward([a, b], np.ones_like(y))
    np.testing.assert_array_equal(ga, [[0.0, 0.5], [0.0, -0.25]])
    np.testing.assert_array_equal(gb, -ga)


def test_mufuru_sqrt_diff_has_no_nan_gradient_when_state_equals_feature():
    rng = np.random.default_rng(11)
    cell = nn.MuFuRu(2, 3, ["sqrt_diff", "keep"])
    x = rng.standard_normal((1, 2))
    # the feature v = sigmoid(feature([x, r * s])); with s = 0.5 and a zero feature layer v = 0.5
    cell.feature.weight.data[...] = 0.0
    cell.feature.bias.data[...] = 0.0
    cell.set_initial_state((np.full((1, 3), 0.5),))
    y = cell.forward(x)
    cell.backward(x, np.ones_like(y))
    grads = np.concatenate([p.grad.ravel() for p in cell.parameters()])
    assert np.isfinite(grads).all()


def test_euclidean_at_zero_distance_has_a_zero_gradient_not_nan(backend):
    """An input equal to a weight column (zero distance): sqrt's inf times 0 made the input
    and weight gradients NaN, which an update spreads; Torch7's gradient there is 0."""
    e = nn.Euclidean(3, 2)
    x = np.stack([e.weight.data[:, 0], [1.0, 2.0, 3.0]])
    y = e.forward(x)
    g = e.backward(x, np.ones_like(y))
    assert y[0, 0] == 0
    d = x[:, :, None] - e.weight.data  # (B, D, O)
    want = np.where(y[:, None, :] > 0, d / np.where(y > 0, y, 1)[:, None, :], 0)
    np.testing.assert_allclose(g, want.sum(-1), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(e.weight.grad, -want.sum(0), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("cls", [nn.Max, nn.Min])
def test_max_min_over_an_empty_dimension_name_the_module(cls):
    with pytest.raises(tn.ShapeError, match=rf"nn.{cls.__name__}\(1\).*\(3, 0\) is empty"):
        cls(1).forward(np.zeros((3, 0)))
    assert cls(1).forward(np.zeros((0, 3))).shape == (0,)  # (an empty batch is fine)


def test_sum_with_size_average_says_so_in_its_repr():
    assert repr(nn.Sum(0, 2, True)) == "nn.Sum(0, 2, size_average=True)"
    assert repr(nn.Sum(1)) == "nn.Sum(1)"


# ---- tn.save through a symbolic link writes its target (as open(), Torch7's, PyTorch's save) ----


def test_save_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "runs").mkdir()
    real = tmp_path / "runs" / "epoch7.npz"
    link = tmp_path / "best.npz"
    old, new = nn.Linear(3, 2), nn.Linear(3, 2)
    tn.save(old, real)
    link.symlink_to(real)
    tn.save(new, link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    got = tn.load_into(nn.Linear(3, 2), real)
    np.testing.assert_array_equal(got.weight.data, new.weight.data)
    dangling = tmp_path / "next.npz"
    dangling.symlink_to(tmp_path / "runs" / "epoch8.npz")
    tn.save(new, dangling)
    assert dangling.is_symlink() and (tmp_path / "runs" / "epoch8.npz").is_file()
    assert not [p for p in tmp_path.rglob("*.tmp")]


# ---- a module tree with a cycle: refused when made, not a RecursionError at print or call ----


def test_a_container_that_would_hold_itself_is_refused_by_name():
    s = nn.Sequential()
    with pytest.raises(tn.ArgumentError, match=r"nn.Sequential: cannot hold itself"):
        s.add(s)
    a, b = nn.Sequential().add(nn.Linear(2, 2)), nn.ConcatTable()
    b.add(a)
    with pytest.raises(tn.ArgumentError, match=r"cannot hold nn.ConcatTable.*which holds it"):
        a.add(b)
    assert len(a) == 1 and repr(a)  # unchanged, printable

    class Holder(nn.Module):
        def build(self, x):
            return x

    h = Holder()
    with pytest.raises(tn.ArgumentError, match="cannot hold itself"):
        h.inner = h
    shared = nn.Linear(2, 2)  # one module in two places is not a cycle
    twice = nn.Sequential().add(shared).add(shared)
    assert twice.forward(np.ones((1, 2))).shape == (1, 2)


# ---- ndarray subclasses: np.matrix / np.memmap computed as plain arrays; masked arrays refused ----


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_matrix_and_memmap_inputs_give_plain_arrays(tmp_path, backend):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3))
    m = nn.Sequential().add(nn.Linear(3, 3)).add(nn.Square())
    want = m.forward(x).copy()
    y = m.forward(np.matrix(x))
    assert type(y) is np.ndarray  # (np.matrix's * is a matrix product: never let it in)
    np.testing.assert_array_equal(y, want)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=x.shape)
    mm[...] = x
    np.testing.assert_array_equal(m.forward(mm), want)


def test_a_masked_array_is_refused_not_its_mask_dropped(backend):
    x = np.ma.masked_array(np.ones((2, 3)), mask=[[0, 1, 0], [0, 0, 0]])
    m = nn.Linear(3, 2)
    with pytest.raises(
        tn.DTypeError, match=r"nn.Linear\(3 -> 2\): got a numpy masked array.*np.ma.filled"
    ):
        m.forward(x)
    with pytest.raises(tn.DTypeError, match="masked array"):
        nn.MSECriterion().forward(np.ones((2, 3)), x)
    y = m.forward(np.ones((2, 3)))
    for _ in range(3):  # (the steady path too)
        m.forward(np.ones((2, 3)))
    with pytest.raises(tn.DTypeError, match=r"grad_output 0 is a numpy masked array"):
        m.backward(np.ones((2, 3)), np.ma.masked_array(np.ones_like(y), mask=[[1, 0], [0, 0]]))


def test_bce_targets_outside_zero_one_are_refused():
    """A target of 2 or -1 (class ids given to BCE) made a meaningless loss without a word;
    PyTorch refuses it ("all elements of target should be between 0 and 1")."""
    c = nn.BCECriterion()
    with pytest.raises(
        tn.ValueRangeError, match=r"targets must be probabilities in \[0, 1\].*\[-1, 2\]"
    ):
        c.forward(np.full((2,), 0.5), np.array([2.0, -1.0]))
    with pytest.raises(tn.ValueRangeError, match="targets"):
        nn.SequencerCriterion(nn.BCECriterion()).forward(np.full((2, 2), 0.5), np.full((2, 2), 3.0))
    assert c.forward(np.full((2,), 0.5), np.array([0.0, 1.0])) == pytest.approx(np.log(2))


def test_a_back_reference_under_an_underscore_name_is_not_a_child():
    class Child(nn.Module):
        def build(self, x):
            return x

    parent = nn.Sequential()
    child = Child()
    parent.add(child)
    with pytest.raises(tn.ArgumentError, match="name starts with '_'"):
        child.parent = parent
    child._parent = parent  # allowed: not registered
    assert parent.forward(np.ones(2)).shape == (2,)
