"""QA round hqa12: masks are selects, not products. A padded row (past a Sequencer `lengths=`
row's end, or all zeros under MaskZero / mask_zero()) is exactly +0.0 whatever it held, and its
NaN / Inf reaches no other row, no state and no gradient (NaN * 0 = NaN before; v * 0 = -0.0).
Oracles: NumPy equations of the Elman RNN run row by row over each row's real steps."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

T, B, D, H = 5, 4, 3, 4
LENGTHS = np.array([5, 3, 1, 2])


def _rnn_alone(w_xh, w_hh, b_h, x, g):
    """One row's real steps (x (L, D), seed g (L, H)): outputs, d/dx, d/dparams of sum(g * y)."""
    hs, h = [], np.zeros(H)
    for t in range(len(x)):
        h = np.tanh(w_xh @ x[t] + b_h + w_hh @ h)
        hs.append(h)
    dx, dw_xh, dw_hh, db = np.zeros_like(x), np.zeros_like(w_xh), np.zeros_like(w_hh), 0 * b_h
    carry = np.zeros(H)
    for t in reversed(range(len(x))):
        dz = (g[t] + carry) * (1 - hs[t] ** 2)
        prev = hs[t - 1] if t else np.zeros(H)
        dx[t] = w_xh.T @ dz
        dw_xh, dw_hh, db = dw_xh + np.outer(dz, x[t]), dw_hh + np.outer(dz, prev), db + dz
        carry = w_hh.T @ dz
    return np.array(hs), dx, {"w_xh": dw_xh, "w_hh": dw_hh, "b_h": db}


def _padded(rng, dtype):
    x = rng.standard_normal((T, B, D)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    poison = np.array([np.nan, np.inf, -np.inf, 1e30], dtype)
    for b, n in enumerate(LENGTHS):
        x[n:, b] = poison[b % 4]  # padding holding NaN / Inf / huge garbage
        g[n:, b] = poison[(b + 1) % 4]  # and so does the caller's gradient there
    return x, g


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("unroll", [False, True])
def test_lengths_padding_with_nan_and_inf_reaches_nothing(backend, dtype, unroll):
    """Failed before hqa12: every output, input gradient and parameter gradient was NaN."""
    rng = np.random.default_rng(12)
    tn.manual_seed(3)
    seq = nn.Sequencer(nn.RNN(D, H), unroll=unroll).astype(dtype)
    p = {k.split(".")[-1]: v.data.astype(np.float64) for k, v in seq.named_parameters().items()}
    x, g = _padded(rng, dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for _ in range(3):  # numba: call 1 runs NumPy, later calls the kernels
        seq.zero_grad_parameters()
        y = seq.forward(x, lengths=LENGTHS)
        gx = seq.backward(x, g)
        grads = {k.split(".")[-1]: v.grad for k, v in seq.named_parameters().items()}
        assert y.dtype == dtype and gx.dtype == dtype
        want_grads = {k: 0 * v for k, v in p.items()}
        for b, n in enumerate(LENGTHS):
            ys, dx, dp = _rnn_alone(p["w_xh"], p["w_hh"], p["b_h"], x[:n, b], g[:n, b])
            np.testing.assert_allclose(y[:n, b], ys, rtol=tol, atol=tol)
            np.testing.assert_allclose(gx[:n, b], dx, rtol=tol, atol=tol)
            want_grads = {k: v + dp[k] for k, v in want_grads.items()}
            # padding: exactly +0.0 (no NaN, no -0.0), in outputs and input gradients
            for pad in (y[n:, b], gx[n:, b]):
                assert np.all(pad == 0) and not np.signbit(pad).any()
        for k, want in want_grads.items():
            np.testing.assert_allclose(grads[k], want, rtol=10 * tol, atol=10 * tol)


def test_lengths_final_state_is_each_rows_last_real_state(backend):
    rng = np.random.default_rng(5)
    seq = nn.Sequencer(nn.GRU(D, H))
    x, _ = _padded(rng, np.float64)
    for _ in range(3):
        seq.forward(x, lengths=LENGTHS)
        (h,) = seq.get(0).get_hidden_state(T - 1)
        assert np.isfinite(h).all()
        for b, n in enumerate(LENGTHS):
            alone = nn.Sequencer(nn.GRU(D, H))
            alone.load_state_dict(seq.state_dict())
            alone.forward(x[:n, b : b + 1])
            np.testing.assert_allclose(h[b], alone.get(0).get_hidden_state(n - 1)[0][0], 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mask_zero_rows_are_plus_zero_and_pass_no_nan_gradient(backend, dtype):
    """mask_zero(): a zero input row's output is +0.0 (it was -0.0 where the cell's value was
    negative) and a NaN gradient arriving there stops (it reached the weights before)."""
    rng = np.random.default_rng(7)
    tn.manual_seed(4)
    cell = nn.RNN(D, H)
    cell.b_h.data[...] = -3.0  # negative outputs everywhere: v * 0 would be -0.0
    seq = nn.Sequencer(cell.mask_zero()).astype(dtype)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    x[1, 0] = x[3, 2] = 0.0
    x[2, 1] = -0.0
    g = rng.standard_normal((T, B, H)).astype(dtype)
    g[1, 0] = g[2, 1] = np.nan
    g[3, 2] = np.inf
    for _ in range(3):
        seq.zero_grad_parameters()
        y = seq.forward(x)
        gx = seq.backward(x, g)
        for t, b in ((1, 0), (2, 1), (3, 2)):
            assert np.all(y[t, b] == 0) and not np.signbit(y[t, b]).any()
            assert np.all(gx[t, b] == 0)
        assert np.isfinite(gx).all()
        assert all(np.isfinite(p.grad).all() for p in seq.parameters())
        # a masked row resets its state: the next step of row 0 starts from h = 0
        w = {k.split(".")[-1]: v.data.astype(np.float64) for k, v in seq.named_parameters().items()}
        want = np.tanh(w["w_xh"] @ x[2, 0] + w["b_h"])
        tol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(y[2, 0], want, rtol=tol, atol=tol)


def test_mask_zero_module_keeps_a_nan_row_and_zeroes_a_zero_row(backend):
    """Torch7's MaskZero masks rows whose norm is 0: a NaN row is data (its NaN shows), a zero
    row is +0.0 with gradient exactly 0 even when the caller's gradient there is NaN."""
    tn.manual_seed(1)
    lin = nn.Linear(2, 3)
    lin.bias.data[...] = -1.0
    m = nn.MaskZero(lin)
    x = np.array([[1.0, 2.0], [np.nan, 0.0], [0.0, -0.0]])
    g = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [np.nan, np.inf, 1.0]])
    for _ in range(3):
        m.zero_grad_parameters()
        y = m.forward(x)
        assert np.isnan(y[1]).all()  # not hidden as padding
        assert np.all(y[2] == 0) and not np.signbit(y[2]).any()
        gx = m.backward(x, g)
        assert np.all(gx[2] == 0)
        np.testing.assert_allclose(lin.bias.grad, [1.0, 1.0, 1.0])  # rows 0 and 1 (g = 0)


def test_mask_zero_criterion_does_not_hide_a_nan_prediction():
    """A NaN row is not padding (Torch7: norm ~= 0): its NaN loss raises NumericError."""
    c = nn.MaskZeroCriterion(nn.ClassNLLCriterion())
    x = np.log(np.full((3, 4), 0.25))
    x[1] = np.nan
    with pytest.raises(tn.errors.NumericError):
        c.forward(x, np.array([0, 1, 2]))
    x[1] = 0.0  # padding: its target (-1) is never read
    loss = c.forward(x, np.array([0, -1, 2]))
    assert loss == pytest.approx(np.log(4.0))
    gx = c.backward(x, np.array([0, -1, 2]))
    assert np.all(gx[1] == 0) and not np.signbit(gx[1]).any()


def test_trim_zero_keeps_a_nan_row_as_mask_zero_does():
    tn.manual_seed(2)
    lin = nn.Linear(2, 3)
    x = np.array([[1.0, 2.0], [np.nan, 0.0], [0.0, 0.0]])
    y_trim = nn.TrimZero(lin, 1).forward(x)
    y_mask = nn.MaskZero(lin, 1).forward(x)
    np.testing.assert_array_equal(y_trim, y_mask)
    assert np.isnan(y_trim[1]).all() and np.all(y_trim[2] == 0)


def test_lookup_table_mask_zero_row_is_plus_zero_even_if_row_0_was_written():
    lt = nn.LookupTableMaskZero(5, 3)
    lt.weight.data[0] = np.nan  # (an update or a load wrote the padding row)
    y = lt.forward(np.array([[0, 1], [2, 0]]))
    assert np.all(y[0, 0] == 0) and np.all(y[1, 1] == 0) and np.isfinite(y).all()
    assert not np.signbit(y[0, 0]).any()


# ---- issue 3: one name per loop in a compile report ----


def test_a_loop_has_one_name_in_every_line_of_the_report():
    """Failed before hqa12: the transducer's LSTM loop read "loop 2.0" forward, "reverse loop 2"
    backward; its Linear loop "loop (top)" (the Linear pushed out of the body) but
    "layout (loop 3.0)". Now every line names a loop by the module that made it."""
    import re

    from tapernn.apps.models import build_model

    model, x, g = build_model("tutorial-transducer", 6, 3, 8)
    model.forward(x)
    model.backward(x, g)
    report = model.compile_report()
    forward = sorted(loop.scope for loop in report.loops if not loop.reverse)
    reverse = sorted(loop.scope for loop in report.loops if loop.reverse)
    layout = sorted(
        re.match(r"layout \(loop (.*?)\):", n)[1] for n in report.notes if "layout" in n
    )
    sequencers = sorted(k for k, m in enumerate(model) if isinstance(m, nn.Sequencer))
    assert forward == reverse == layout == [str(k) for k in sequencers]
    text = str(report)
    for k in sequencers:
        assert f"\nloop {k}: " in text and f"\nreverse loop {k}: " in text
    root = nn.Sequencer(nn.GRU(3, 4))
    root.forward(np.ones((4, 2, 3)))
    root.backward(np.ones((4, 2, 3)), np.ones((4, 2, 4)))
    assert {loop.scope or "(top)" for loop in root.compile_report().loops} == {"(top)"}
    assert "\nloop (top): " in str(root.compile_report())


def test_lengths_take_a_time_major_batch_of_ids(backend):
    """(T, B) ids into Sequencer(LookupTable -> GRU) with lengths=: each row as if alone.
    Before hqa12 this raised "lengths must be integers, one per batch row (3), got [4 2 1]"
    (the (B,) steps of ids were taken for unbatched rows)."""
    tn.manual_seed(6)

    def make():
        return nn.Sequencer(nn.Sequential().add(nn.LookupTable(10, 4)).add(nn.GRU(4, 3)))

    m = make()
    ids = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 1, 1]])
    lengths = np.array([4, 2, 1])
    for _ in range(3):
        y = m.forward(ids, lengths=lengths)
        m.backward(ids, np.ones_like(y))
    for b, n in enumerate(lengths):
        alone = make()
        alone.load_state_dict(m.state_dict())
        np.testing.assert_allclose(y[:n, b], alone.forward(ids[:n, b : b + 1])[:, 0], 1e-12)
        assert np.all(y[n:, b] == 0)


def test_lengths_on_unbatched_steps_say_why():
    seq = nn.Sequencer(nn.RNN(3, 2))
    with pytest.raises(tn.errors.ShapeError, match=r"batched steps.*got steps of shape \(3,\)"):
        seq.forward(np.ones((4, 3)), lengths=np.array([2, 2, 2]))


# ---- tn.save / tn.load_into: bad arguments (before hqa12: AttributeError / TypeError, and an
# empty path wrote a hidden '.npz' into the working directory) ----


@pytest.mark.parametrize("fn", ["save", "load_into"])
@pytest.mark.parametrize("module", [5, None, nn.Linear])
def test_save_and_load_refuse_what_is_not_a_module(tmp_path, fn, module):
    tn.save(nn.Linear(3, 2), tmp_path / "m")
    with pytest.raises(tn.errors.ArgumentTypeError, match=f"tn.{fn} expects a module"):
        getattr(tn, fn)(module, tmp_path / "m")


@pytest.mark.parametrize("fn", ["save", "load_into"])
def test_save_and_load_refuse_a_path_that_is_none_a_number_or_empty(tmp_path, monkeypatch, fn):
    monkeypatch.chdir(tmp_path)
    for path in (5, None):
        with pytest.raises(tn.errors.ArgumentTypeError, match="expects a file path"):
            getattr(tn, fn)(nn.Linear(3, 2), path)
    with pytest.raises(tn.errors.ArgumentError, match="empty"):
        getattr(tn, fn)(nn.Linear(3, 2), "")
    assert list(tmp_path.iterdir()) == []


def test_save_and_load_take_a_bytes_path(tmp_path):
    m = nn.Linear(3, 2)
    tn.save(m, bytes(tmp_path / "m"))
    other = tn.load_into(nn.Linear(3, 2), bytes(tmp_path / "m.npz"))
    np.testing.assert_array_equal(other.weight.data, m.weight.data)


# ---- clamps and softplus at +/-inf (before hqa12: NaN from 0 * inf and inf - inf) ----


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hardtanh_and_clamp_clamp_infinities_and_keep_nan(backend, dtype):
    x = np.array([np.inf, -np.inf, np.nan, 0.5, -0.5, 3.0, -3.0, 1.0, -1.0], dtype)
    g = np.arange(1.0, 10.0).astype(dtype)
    for m, lo, hi in ((nn.HardTanh(), -1.0, 1.0), (nn.Clamp(-2.0, 2.0), -2.0, 2.0)):
        m.astype(dtype)
        for _ in range(3):
            y = m.forward(x)
            np.testing.assert_array_equal(y, np.clip(x, lo, hi))  # (np.clip keeps NaN)
            gx = m.backward(x, g)
            inside = (x > lo) & (x < hi)  # Torch7: gradient 0 on and beyond the bounds
            np.testing.assert_array_equal(gx[~np.isnan(x)], np.where(inside, g, 0)[~np.isnan(x)])
            assert y.dtype == dtype


def test_hardtanh_gradcheck_inside_and_out():
    x = np.array([[0.3, -0.7, 2.5], [-1.8, 0.05, 0.9]])
    assert tn.gradcheck(lambda v: tn.sum(nn.HardTanh().build(v) * v), x)


def test_log_sigmoid_and_softplus_at_infinities(backend):
    x = np.array([np.inf, -np.inf, 40.0, -40.0, 0.0])
    want = -np.logaddexp(0, -x)
    m = nn.LogSigmoid()
    for _ in range(3):
        # (log(1 + e^-40) is 0 in float64, as Torch7's; logaddexp keeps 4e-18)
        np.testing.assert_allclose(m.forward(x), want, rtol=1e-15, atol=1e-15)
        grad = m.backward(x, np.ones(5))
        np.testing.assert_allclose(grad, 1 / (1 + np.exp(x)), rtol=1e-15)  # s(-x)
