"""backward(input, grad_output, need_grad_input=False): parameter gradients equal the full
backward's, no input gradient is returned, and the backward program it runs has no dX work
(no node shaped like the input's gradient, fewer kernels in the compile report)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.ops.registry import get_op

T, B, D, H = 4, 2, 3, 5


def _model(kind):
    tn.manual_seed(7)
    cell = {
        "fastlstm": lambda: nn.FastLSTM(D, H),
        "gru": lambda: nn.GRU(D, H),
        "lstm": lambda: nn.LSTM(D, H),
    }[kind]()
    return nn.Sequencer(cell, unroll=True)  # dX looked for in the unrolled programs


def _grads(m):
    return {k: p.grad.copy() for k, p in m.named_parameters().items()}


@pytest.mark.parametrize("kind", ["fastlstm", "gru", "lstm"])
def test_parameter_gradients_equal_without_the_input_gradient(kind):
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    m = _model(kind)
    m.forward(x)
    m.zero_grad_parameters()
    full_input = m.backward(x, g)
    full = _grads(m)
    full_report = m.compile_report()
    m.forward(x)
    m.zero_grad_parameters()
    assert m.backward(x, g, need_grad_input=False) is None
    assert m.grad_input is None
    for name, grad in _grads(m).items():
        np.testing.assert_allclose(grad, full[name], rtol=1e-12, atol=1e-12, err_msg=name)
    assert full_input.shape == x.shape
    # the dX work is absent from the program that ran: fewer kernels, no (.., D)-shaped value
    # computed in it (D != H, and T, B, T*B differ from the gate widths)
    lean_report = m.compile_report()
    assert lean_report.kernels < full_report.kernels
    pair = m._runtime.last.training_pair
    lean, whole = pair.last_backward.graph, pair.backward.graph

    def computed_like_dx(graph):  # arithmetic (not views of x) shaped like dX or its rows
        return [
            n
            for n in graph.nodes
            if n.op not in ("input", "constant")
            and not get_op(n.op).view
            and n.shape[-1:] == (D,)
            and n.ndim >= 2
            and n.shape[0] in (T, B, T * B)
        ]  # weight gradients: (gates * H, D)

    assert computed_like_dx(whole)  # the full backward computes dX
    assert not computed_like_dx(lean)
    # and the full backward is still there: asking for grad_input again gives it
    m.forward(x)
    m.zero_grad_parameters()
    np.testing.assert_allclose(m.backward(x, g), full_input, rtol=1e-12, atol=1e-12)
    for name, grad in _grads(m).items():
        np.testing.assert_allclose(grad, full[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_stepwise_backward_without_input_gradients():
    rng = np.random.default_rng(1)
    xs, gs = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
    a, b = _model("lstm").module, _model("lstm").module
    for m, need in ((a, True), (b, False)):
        for t in range(T):
            m.forward(xs[t])
        for t in reversed(range(T)):
            r = m.backward(xs[t], gs[t], need_grad_input=need)
            assert (r is None) == (not need)
    for (name, p), q in zip(a.named_parameters().items(), b.parameters()):
        np.testing.assert_allclose(q.grad, p.grad, rtol=1e-12, atol=1e-12, err_msg=name)


def test_trimzero_passes_need_grad_input_to_its_module():
    tn.manual_seed(0)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, D))
    x[1] = 0.0  # a padding row: TrimZero runs its module on the other rows
    g = rng.standard_normal((5, H))
    m = nn.TrimZero(nn.Linear(D, H), 1)
    m.forward(x)
    m.zero_grad_parameters()
    m.backward(x, g)
    full = _grads(m)
    m.forward(x)
    m.zero_grad_parameters()
    assert m.backward(x, g, need_grad_input=False) is None and m.grad_input is None
    for name, grad in _grads(m).items():
        np.testing.assert_allclose(grad, full[name], rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("bad", ["no", 0, None, 1.0])
@pytest.mark.parametrize("trim", [False, True])
def test_need_grad_input_that_is_not_a_bool_is_refused(bad, trim):
    # "no" is truthy: accepted silently before, it computed (and returned) the input gradient
    tn.manual_seed(0)
    x = np.random.default_rng(3).standard_normal((T, B, D))
    m = _model("fastlstm")
    if trim:  # TrimZero's own backward (rows of zeros skipped)
        x = x[0]
        m = nn.TrimZero(nn.Linear(D, H), 1)
    y = m.forward(x)
    with pytest.raises(tn.TapernnError, match="need_grad_input must be True or False"):
        m.backward(x, np.ones_like(y), need_grad_input=bad)
    assert m.backward(x, np.ones_like(y), need_grad_input=np.True_).shape == x.shape
