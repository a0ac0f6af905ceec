"""QA round hqa9: regression tests for what it found."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn

# ---- CMul with a weight that broadcasts (Torch7's own example: nn.CMul(5, 1) on a 5x4 input) ----


@pytest.mark.parametrize(
    "size, x_shape",
    [((5, 1), (5, 4)), ((1, 4), (3, 4)), ((1, 4), (2, 3, 4)), ((3, 1, 4), (3, 2, 4))],
)
def test_cmul_weight_broadcasts_over_its_unit_dims(size, x_shape):
    rng = np.random.default_rng(0)
    m = nn.CMul(*size)
    x, g = rng.standard_normal(x_shape), rng.standard_normal(x_shape)
    w = m.weight.data.copy()
    y = m.forward(x)
    gx = m.backward(x, g)
    np.testing.assert_allclose(y, x * w, rtol=0, atol=1e-15)
    np.testing.assert_allclose(gx, g * w, rtol=0, atol=1e-15)
    lead = tuple(range(len(x_shape) - len(size)))
    want = np.sum(g * x, axis=lead) if lead else g * x
    want = np.sum(want, axis=tuple(k for k, n in enumerate(size) if n == 1), keepdims=True)
    np.testing.assert_allclose(m.weight.grad, want, rtol=1e-13, atol=1e-13)


def test_cmul_weight_that_does_not_broadcast_is_refused_by_name():
    with pytest.raises(tn.ShapeError, match=r"nn.CMul\(3, 1\).*\(5, 4\)"):
        nn.CMul(3, 1).forward(np.zeros((5, 4)))


def test_cmul_with_a_unit_dim_inside_a_sequencer(backend):
    rng = np.random.default_rng(1)
    tn.manual_seed(3)
    seq = nn.Sequencer(nn.Sequential().add(nn.Linear(3, 4)).add(nn.CMul(1, 4)))
    x, g = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    lin, cmul = seq.get(0).get(0), seq.get(0).get(1)
    for _ in range(2):
        seq.zero_grad_parameters()
        y = seq.forward(x)
        seq.backward(x, g)
    a = x @ lin.weight.data.T + lin.bias.data
    np.testing.assert_allclose(y, a * cmul.weight.data, atol=1e-13)
    np.testing.assert_allclose(cmul.weight.grad, np.sum(g * a, axis=(0, 1))[None], atol=1e-12)


# ---- a parameter bound to a second attribute is one parameter, not two ----------------------------


class _Aliased(nn.Cell):
    """Keeps its parameters under attributes other than their names (self.W for "weight")."""

    state_names = ("h",)

    def __init__(self):
        super().__init__(3, 4)
        self.W = self.parameter("weight", (3, 4))
        self.U = self.parameter("u", (4, 4))

    def step(self, x, h):
        return tn.tanh(x @ self.W + h @ self.U)


def _stepped_grads(cell, x):
    cell.zero_grad_parameters()
    ys = [cell.forward(x[t]) for t in range(len(x))]
    for t in reversed(range(len(x))):
        cell.backward(x[t], np.ones_like(ys[t]))


def test_a_parameter_under_a_second_attribute_is_listed_once():
    cell = _Aliased()
    assert list(cell.named_parameters()) == ["weight", "u"]
    assert list(cell.state_dict()) == ["weight", "u"]
    assert len(cell.parameters()) == 2


def test_an_optimiser_over_an_aliased_cell_steps_each_parameter_once():
    x = np.random.default_rng(0).standard_normal((3, 2, 3))
    cell = _Aliased()
    w0 = cell.W.data.copy()
    opt = tn.optim.SGD(cell.parameters(), lr=0.1)
    _stepped_grads(cell, x)
    grad = cell.W.grad.copy()
    norm = np.sqrt(np.sum(cell.W.grad**2) + np.sum(cell.U.grad**2))
    assert tn.optim.clip_grad_norm(cell.parameters(), 1e9) == pytest.approx(norm, rel=1e-12)
    opt.step()
    np.testing.assert_allclose(cell.W.data, w0 - 0.1 * grad, rtol=0, atol=1e-15)


def test_registering_a_parameter_name_twice_is_refused():
    class Twice(nn.Cell):
        state_names = ("h",)

        def __init__(self):
            super().__init__(3, 4)
            self.w = self.parameter("w", (3, 4))
            self.w2 = self.parameter("w", (3, 4))  # a copy-paste slip: would replace the first

        def step(self, x, h):
            return tn.tanh(x @ self.w + x @ self.w2)

    with pytest.raises(tn.ArgumentError, match=r"parameter 'w' is already registered"):
        Twice()


# ---- criteria: class weights of the wrong length, lists where arrays go ----------------------------


@pytest.mark.parametrize("cls", [nn.ClassNLLCriterion, nn.CrossEntropyCriterion])
@pytest.mark.parametrize("n_weights", [3, 6])
@pytest.mark.parametrize("targets", [[3, 0], [1, 0]])
def test_class_weights_must_cover_every_class(cls, n_weights, targets):
    crit = cls(weights=np.ones(n_weights))
    x = np.log(np.full((2, 4), 0.25))
    with pytest.raises(tn.ShapeError, match=rf"{n_weights} class weights.* 4 classes"):
        crit.forward(x, np.array(targets))


def test_class_weights_inside_a_sequencer_criterion_are_checked_too():
    crit = nn.SequencerCriterion(nn.ClassNLLCriterion(weights=np.ones(3)))
    with pytest.raises(tn.ShapeError, match="3 class weights"):
        crit.forward(np.zeros((2, 2, 4)), np.zeros((2, 2), dtype=int))


@pytest.mark.parametrize(
    "crit, x, y",
    [
        (nn.MSECriterion(), [[0.0, 1.0], [2.0, 3.0]], np.zeros((2, 2))),
        (nn.MSECriterion(), np.zeros((2, 2)), [[0.0, 1.0], [2.0, 3.0]]),
        (nn.BCECriterion(), np.full((2, 2), 0.5), [[0.0, 1.0], [1.0, 0.0]]),
        (nn.ClassNLLCriterion(), np.log(np.full((2, 3), 1 / 3)), [0, 1]),
        (nn.CrossEntropyCriterion(), np.zeros((2, 3)), [0, 1]),
        (nn.MaskZeroCriterion(nn.MSECriterion()), np.ones((2, 2)), [[0.0, 1.0], [2.0, 3.0]]),
    ],
)
def test_a_list_where_a_criterion_takes_an_array_says_so(crit, x, y):
    with pytest.raises(tn.ShapeError, match="list"):
        crit.forward(x, y)


# ---- tracing: float()/int() of a Var; a step returning no Var ---------------------------------------


@pytest.mark.parametrize("convert", [float, int, complex])
def test_python_number_of_a_var_is_a_tracing_error(convert):
    with pytest.raises(tn.TracingError, match="no value"):
        tn.trace(lambda a: a * convert(tn.sum(a)), np.zeros(3))


@pytest.mark.parametrize("result", [None, 0.0, "h"])
def test_a_step_that_returns_no_var_names_the_cell(result):
    class NoVar(nn.Cell):
        state_names = ("h",)

        def __init__(self):
            super().__init__(3, 4)

        def step(self, x, h):
            return result

    with pytest.raises(tn.TapernnError, match=r"NoVar.*step.*returned"):
        nn.Sequencer(NoVar()).forward(np.zeros((2, 1, 3)))


@pytest.mark.parametrize("wrt", [5, [5], [-2], 1.5, {0}])
def test_grad_wrt_out_of_range_or_of_another_type_is_refused_by_name(wrt):
    g = tn.trace(lambda a: tn.sum(a * a), np.zeros(3))
    with pytest.raises(tn.ArgumentError, match="wrt"):
        tn.grad(g, wrt=wrt)


@pytest.mark.parametrize("wrt", [0, [0], "x0", [-1]])
def test_grad_wrt_one_entry_works(wrt):
    g = tn.trace(lambda a: tn.sum(a * a), np.zeros(3))
    (dx,) = tn.compile(tn.grad(g, wrt=wrt))(np.arange(3.0))[1:]
    np.testing.assert_array_equal(dx, [0.0, 2.0, 4.0])


# ---- tapernn train: a second Ctrl-C while the interrupted run saves does not lose the save ---------


def test_a_second_ctrl_c_during_the_interrupted_runs_save_still_saves(
    tmp_path, monkeypatch, capsys
):
    import signal

    from test_train import word_text

    from tapernn.apps import trainer as trainer_module
    from tapernn.apps.checkpoint import load_checkpoint
    from tapernn.apps.train import main

    text = tmp_path / "t.txt"
    text.write_text(word_text(300))
    real_step, real_save = trainer_module.CharLM.train_step, trainer_module.save_checkpoint
    steps = []

    def step_then_ctrl_c(self, *args, **kwargs):  # the user's first Ctrl-C, after 3 steps
        steps.append(1)
        out = real_step(self, *args, **kwargs)
        if len(steps) == 3:
            signal.raise_signal(signal.SIGINT)
        return out

    def impatient_save(*args, **kwargs):  # and the second, while the checkpoint is written
        signal.raise_signal(signal.SIGINT)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(trainer_module.CharLM, "train_step", step_then_ctrl_c)
    monkeypatch.setattr(trainer_module, "save_checkpoint", impatient_save)
    argv = ["--text", str(text), "--steps", "1000", "--checkpoint", str(tmp_path / "ck")]
    argv += ["--hidden", "8", "--embed", "4", "--batch", "4", "--seq-len", "8", "--no-progress"]
    argv += ["--sample-len", "0"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 3; checkpoint saved" in err, err
    assert "Ctrl-C again" in err, err  # the first Ctrl-C said what happens next
    assert load_checkpoint(str(tmp_path / "ck")).step == 3


# ---- constructors: wrong arguments name the class and what it takes; MaskZero's nInputDim --------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: nn.Linear(3), r"nn.Linear: .*missing .*output_size.*takes nn.Linear\(input_size"),
        (lambda: nn.Dropout(0.5, True, False, True, 1), r"nn.Dropout: .*takes nn.Dropout\(p"),
        (lambda: nn.SelectTable(), r"nn.SelectTable: .*index"),
        (lambda: nn.Sequencer(nn.GRU(2, 2), remember=True), r"nn.Sequencer: .*'remember'"),
        (lambda: nn.ClassNLLCriterion(np.ones(3), True, -100, 5), r"nn.ClassNLLCriterion: "),
    ],
)
def test_constructor_with_wrong_arguments_names_the_class(make, match):
    with pytest.raises(tn.ArgumentTypeError, match=match):
        make()


def test_a_custom_cell_given_wrong_arguments_names_its_class():
    class MyCell(nn.Cell):
        def __init__(self, input_size, hidden_size):
            super().__init__(input_size, hidden_size)

        def step(self, x, h):
            return h

    with pytest.raises(tn.ArgumentTypeError, match=r"nn.MyCell: .*hidden_size"):
        MyCell(3)


def test_mask_zero_takes_torch7s_n_input_dim():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    x[1] = 0
    lin = nn.Linear(3, 2)
    want = nn.MaskZero(lin).forward(x).copy()
    np.testing.assert_array_equal(nn.MaskZero(lin, 1).forward(x), want)
    # n_input_dim = 2: a (B, s, d) batch of matrices; a row is masked when its whole matrix is 0
    xm = rng.standard_normal((3, 2, 3))
    xm[2] = 0
    xm[0, 1] = 0  # a zero sub-row inside a kept row stays
    want = xm + 1
    want[2] = 0
    np.testing.assert_array_equal(nn.MaskZero(nn.AddConstant(1.0), 2).forward(xm), want)
    # ... and a 2-D input is then one row
    np.testing.assert_array_equal(nn.MaskZero(nn.AddConstant(1.0), 2).forward(xm[2]), 0)
    np.testing.assert_array_equal(nn.MaskZero(nn.AddConstant(1.0), 2).forward(xm[0]), xm[0] + 1)
    with pytest.raises(tn.ShapeError, match="n_input_dim 2"):
        nn.MaskZero(nn.Tanh(), 2).forward(np.zeros(3))


# ---- stepping by hand in evaluation mode, then in training mode: steps keep their numbers ---------


def _eval_then_train(make, xs, gs, n_eval):
    tn.manual_seed(0)
    m = make()
    m.evaluate()
    for t in range(n_eval):
        m.forward(xs[t])
    last = tuple(s.copy() for s in m.get_hidden_state(-1))
    m.training()
    m.zero_grad_parameters()
    ys = [m.forward(xs[t]).copy() for t in range(n_eval, len(xs))]
    for t in reversed(range(n_eval, len(xs))):
        m.backward(xs[t], gs[t])
    return m, last, ys


@pytest.mark.parametrize("make", [lambda: nn.LSTM(3, 4), lambda: nn.GRU(3, 4)])
def test_steps_run_in_evaluation_then_training_keep_their_numbers(make, backend):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, 3)) for _ in range(9)]
    gs = [rng.standard_normal((2, 4)) for _ in range(9)]
    m, last, ys = _eval_then_train(make, xs, gs, 5)
    tn.manual_seed(0)
    ref = make()
    ref.set_initial_state(last)
    ref.zero_grad_parameters()
    want = [ref.forward(xs[t]).copy() for t in range(5, 9)]
    for t in reversed(range(5, 9)):
        ref.backward(xs[t], gs[t])
    np.testing.assert_allclose(np.stack(ys), np.stack(want), atol=1e-13)
    for t in range(5, 9):
        np.testing.assert_array_equal(m.outputs[t], ys[t - 5])
        np.testing.assert_array_equal(m.get_hidden_state(t)[0], ys[t - 5])
        for a, b in zip(m.get_grad_hidden_state(t), ref.get_grad_hidden_state(t - 5)):
            np.testing.assert_allclose(a, b, atol=1e-13)
    np.testing.assert_array_equal(m.get_hidden_state(4)[0], last[0])
    for p, q in zip(m.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, atol=1e-13)


def test_evaluation_mode_hidden_state_of_an_older_step_is_refused_not_another_steps():
    rng = np.random.default_rng(1)
    m = nn.LSTM(3, 4)
    m.evaluate()
    ys = [m.forward(rng.standard_normal((2, 3))).copy() for _ in range(5)]
    np.testing.assert_array_equal(m.get_hidden_state(4)[0], ys[4])
    np.testing.assert_array_equal(m.get_hidden_state(-1)[0], ys[4])
    with pytest.raises(tn.StateError, match="step 0 was dropped; evaluation mode"):
        m.get_hidden_state(0)
    with pytest.raises(tn.StateError, match="no step 5"):
        m.get_hidden_state(5)


def test_a_none_in_a_table_gradient_is_named():
    seq = nn.Sequencer(nn.LSTM(3, 4))
    xs = [np.ones((2, 3))] * 3
    seq.forward(xs)
    with pytest.raises(tn.DTypeError, match="got NoneType"):
        seq.backward(xs, [None, None, np.ones((2, 4))])
