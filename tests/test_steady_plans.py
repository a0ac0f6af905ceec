"""What the steady path plans once per signature (nn.steady, nn.steady_source, issue 19): the
generated forward and backward, a Sequencer's forget hook as one function, and the scratch
arrays whole-program kernels write their private results into. Values against hand-written
NumPy equations (float64, 1e-12): returned outputs and gradients are never overwritten by later
calls, and every condition the plans assume takes the general hook or path when it fails."""

import copy

import numpy as np
from cell_reference import complex_step_grads, fastlstm_step
from test_steady import count_general

import tapernn as tn
from tapernn import nn

T, B, D, H = 5, 2, 3, 4


def params_of(m):
    return {k: p.data.astype(np.float64) for k, p in m.named_parameters().items()}


def equations(cell, x, seed=None, h=None, c=None):
    """Outputs, final (h, c) and, with `seed` (from zero states), the exact gradients."""
    p = params_of(cell)
    h = np.zeros((x.shape[1], H)) if h is None else h
    c = np.zeros((x.shape[1], H)) if c is None else c
    outs = []
    for xt in x:
        h, c = fastlstm_step(p, xt, h, c)
        outs.append(h)
    grads = None if seed is None else complex_step_grads(fastlstm_step, p, x, 2, H, seed)
    return np.stack(outs), (h, c), grads


def data(k):
    r = np.random.default_rng(k)
    return r.standard_normal((T, B, D)), r.standard_normal((T, B, H))


def model(cell=None):
    tn.manual_seed(3)
    return nn.Sequencer(cell if cell is not None else nn.FastLSTM(D, H))


def warm(seq):
    x, g = data(100)
    for _ in range(2):
        seq.forward(x)
        seq.backward(x, g)
    assert seq._runtime.steady is not None


def uses_scratch(seq):
    """Whether the steady calls ran a whole-program kernel writing into scratch arrays."""
    return any(d not in (None, fn) for fn, _, d in seq._runtime.steady.scratch.values())


def test_returned_values_survive_later_steady_calls(backend, monkeypatch):
    seq = model()
    warm(seq)
    general = count_general(monkeypatch)
    kept = []
    for k in range(4):
        x, g = data(k)
        y = seq.forward(x)
        seq.zero_grad_parameters()
        gx = seq.backward(x, g)
        grads = {name: p.grad for name, p in seq.module.named_parameters().items()}
        fields = (list(seq.module.outputs), seq.module.get_hidden_state(-1))
        kept.append((x, g, y, gx, {n: a.copy() for n, a in grads.items()}, fields))
    # forward, forward, backward: the first output stays, the backward is the second call's
    x1, _ = data(10)
    x2, g2 = data(11)
    y1 = seq.forward(x1)
    y2 = seq.forward(x2)
    seq.zero_grad_parameters()
    gx2 = seq.backward(x2, g2)
    assert general == []  # every call above was a steady one
    if backend == "numba":
        assert uses_scratch(seq)
    for x, g, y, gx, grads, fields in kept + [(x2, g2, y2, gx2, None, None)]:
        want, (h_want, c_want), exact = equations(seq.module, x, g)
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gx, exact["input"], rtol=1e-12, atol=1e-12)
        if grads is None:
            grads = {n: p.grad for n, p in seq.module.named_parameters().items()}
        for name, grad in grads.items():
            np.testing.assert_allclose(grad, exact[name], rtol=1e-12, atol=1e-12, err_msg=name)
        if fields is not None:
            outputs, (h, c) = fields
            np.testing.assert_allclose(np.stack(outputs), want, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(h, h_want, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(c, c_want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y1, equations(seq.module, x1)[0], rtol=1e-12, atol=1e-12)


def test_remember_switched_on_between_steady_calls_continues(backend, monkeypatch):
    seq = model()
    warm(seq)
    general = count_general(monkeypatch)
    x, g = data(0)
    seq.forward(x)
    seq.backward(x, g)
    _, (h, c), _ = equations(seq.module, x)
    seq.remember("both")  # (no signature change: the planned forget hook must not forget)
    y = seq.forward(x)
    np.testing.assert_allclose(y, equations(seq.module, x, None, h, c)[0], rtol=1e-12, atol=1e-12)
    assert len(general) == 1  # from a remembered state: the general path
    seq.remember("neither")
    y = seq.forward(x)
    np.testing.assert_allclose(y, equations(seq.module, x)[0], rtol=1e-12, atol=1e-12)


class CountingLSTM(nn.FastLSTM):
    """A cell that clears its memory its own way (the planned forget hook must not replace
    its _clear_memory) and has a hook of its own."""

    def __init__(self, *a):
        super().__init__(*a)
        self.cleared = self.hooked = 0

    def _clear_memory(self, keep_initial):
        self.__dict__["cleared"] += 1
        super()._clear_memory(keep_initial)

    def _before_forward(self):
        self.__dict__["hooked"] += 1
        super()._before_forward()


def test_a_cell_clearing_its_own_way_keeps_the_general_hooks(backend):
    cell = CountingLSTM(D, H)
    seq = model(cell)
    warm(seq)
    before = (cell.cleared, cell.hooked)
    for k in range(3):
        x, g = data(k)
        y = seq.forward(x)
        seq.zero_grad_parameters()
        gx = seq.backward(x, g)
        want, _, exact = equations(cell, x, g)
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gx, exact["input"], rtol=1e-12, atol=1e-12)
    assert (cell.cleared, cell.hooked) == (before[0] + 3, before[1] + 3)
    from tapernn.nn.sequencer import planned_forget

    assert planned_forget(seq) is None
    assert planned_forget(model()) is not None


def test_a_copied_model_runs_apart_from_the_original(backend):
    seq = model()
    warm(seq)
    x, g = data(0)
    y = seq.forward(x)
    seq.zero_grad_parameters()
    seq.backward(x, g)
    outputs = list(seq.module.outputs)
    grads = [p.grad.copy() for p in seq.parameters()]
    twin = copy.deepcopy(seq)
    x2, g2 = data(1)
    for _ in range(3):  # the twin's calls (general, then steady) leave the original alone
        y2 = twin.forward(x2)
        twin.zero_grad_parameters()
        twin.backward(x2, g2)
    assert twin._runtime.steady is not None and twin._runtime.steady is not seq._runtime.steady
    want, _, exact = equations(twin.module, x2, g2)
    np.testing.assert_allclose(y2, want, rtol=1e-12, atol=1e-12)
    for name, p in twin.module.named_parameters().items():
        np.testing.assert_allclose(p.grad, exact[name], rtol=1e-12, atol=1e-12, err_msg=name)
    assert seq.output is y
    for a, b in zip(seq.module.outputs, outputs):
        np.testing.assert_array_equal(a, b)
    for p, grad in zip(seq.parameters(), grads):
        np.testing.assert_array_equal(p.grad, grad)
    h = equations(seq.module, x)[1][0]
    np.testing.assert_allclose(seq.module._state[0], h, rtol=1e-12, atol=1e-12)
