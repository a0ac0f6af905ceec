"""grad: tags on appended nodes, seeds, wrt selection, second order against finite differences."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import tracing
from tapernn.interpret import interpret


def hvp_check(fn, x, v, eps=1e-6):
    """grad(grad(f)) gives H v; compare with central differences of the first gradient."""
    g1 = tn.grad(tn.trace(lambda a: tn.sum(fn(a)), x))  # outputs: f, df/dx
    g2 = tn.grad(g1, wrt=[0], seeds="inputs")  # seeds for f and df/dx
    hv = tn.compile(g2)(x, np.zeros(()), v)[-1]
    first = tn.compile(g1)
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        numeric[i] = np.sum((first(xp)[1] - first(xm)[1]) * v) / (2 * eps)
    np.testing.assert_allclose(hv, numeric, rtol=1e-5, atol=1e-7)


W = np.random.default_rng(0).standard_normal((4, 3))


@pytest.mark.parametrize(
    "name,fn",
    [
        ("tanh", tn.tanh),
        ("sigmoid", tn.sigmoid),
        ("matmul", lambda a: tn.tanh(a @ W) @ W.T * a),
        ("log_softmax", lambda a: tn.log_softmax(a) * np.arange(4.0)),
    ],
)
def test_second_order(name, fn):
    rng = np.random.default_rng(1)
    hvp_check(fn, rng.standard_normal((2, 4)), rng.standard_normal((2, 4)))


def test_backward_nodes_keep_step_and_scope():
    def fn(x, w):
        h = x
        for t in range(3):
            with tracing.step(t), tracing.scope("seq"), tracing.scope("lstm"):
                h = tn.tanh(h @ w)
        return tn.sum(h)

    forward = tn.trace(fn, np.ones((2, 3)), np.ones((3, 3)))
    g = tn.grad(forward)
    tanhs = [n for n in g.nodes if n.op == "tanh"]
    assert [n.step for n in tanhs] == [0, 1, 2] and {n.scope for n in tanhs} == {"seq.lstm"}
    backward = [n for n in g.nodes if n.phase == "backward" and n.op == "matmul"]
    assert backward and {n.scope for n in backward} == {"seq.lstm"}
    assert {n.step for n in backward} == {0, 1, 2}
    n_fwd = len(forward.nodes)
    assert all(n.phase == "forward" for n in g.nodes[:n_fwd])
    assert all(n.phase == "backward" for n in g.nodes[n_fwd:])


def test_non_scalar_outputs_take_seed_inputs():
    g = tn.grad(tn.trace(lambda x: [x * 2, tn.tanh(x)], np.ones(3)))
    seeds = [n for n in g.inputs if n.kind == "seed"]
    assert [n.name for n in seeds] == ["grad_out0", "grad_out1"]
    x, s0, s1 = np.arange(3.0), np.ones(3), np.full(3, 2.0)
    out = tn.compile(g)(x, s0, s1)
    np.testing.assert_allclose(out[-1], 2 * s0 + s1 * (1 - np.tanh(x) ** 2))


def test_wrt_by_name_and_unused_input_gets_zeros():
    g = tn.trace(lambda x, y: tn.sum(x * 3), np.ones(2), np.ones(4), names=["x", "y"])
    out = tn.compile(tn.grad(g, wrt=["y", "x"]))(np.ones(2), np.ones(4))
    np.testing.assert_array_equal(out[1], np.zeros(4))
    np.testing.assert_array_equal(out[2], [3.0, 3.0])


def test_gradient_accumulates_over_reuse_with_one_add_n():
    g = tn.grad(tn.trace(lambda x: tn.sum(tn.tanh(x) + tn.exp(x) + x * x), np.ones(3)))
    assert g.op_counts().get("add_n") == 1
    x = np.array([0.1, -0.3, 0.7])
    np.testing.assert_allclose(tn.compile(g)(x)[1], 1 - np.tanh(x) ** 2 + np.exp(x) + 2 * x)


def test_integer_inputs_are_not_differentiated():
    g = tn.grad(
        tn.trace(lambda w, ids: tn.sum(tn.embedding(w, ids)), np.ones((5, 2)), np.array([1, 1, 4]))
    )
    assert g.meta.wrt == ("x0",)
    out = tn.compile(g)(np.ones((5, 2)), np.array([1, 1, 4]))
    np.testing.assert_array_equal(out[1][:, 0], [0, 2, 0, 0, 1])


def test_split_forward_backward_equals_the_joint_graph():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from lstm_fixture import lstm_graph

    from tapernn.autodiff import split_forward_backward

    g, arrays = lstm_graph(3, 2, 3, 4, seed=5)
    fwd, bwd = split_forward_backward(g, 1)
    fwd.verify()
    bwd.verify()
    joint = interpret(g, *arrays)
    outs = tn.compile(fwd)(*arrays)
    saved = outs[1:]
    assert len(saved) == len(bwd.meta.saved_names) == len(fwd.meta.saved_outputs)
    assert {n.kind for n in bwd.inputs[: len(saved)]} == {"saved"}
    by_name = dict(zip([n.name for n in g.inputs], arrays))
    grads = tn.compile(bwd)(*saved, *[by_name[n] for n in bwd.meta.input_names])
    np.testing.assert_allclose(outs[0], joint[0], rtol=1e-12)
    assert len(grads) == len(joint) - 1
    for a, b in zip(grads, joint[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert all(n.phase == "forward" for n in fwd.nodes)
    assert not any(n.op == "getitem" and n.inputs[0].op == "input" for n in fwd.outputs[1:])


def test_split_with_seeds():
    from tapernn.autodiff import split_forward_backward

    x = np.linspace(-1, 1, 6).reshape(2, 3)
    w = np.linspace(0, 1, 12).reshape(3, 4)
    g = tn.grad(tn.trace(lambda a, b: (tn.tanh(a @ b), tn.sum(a)), x, w))
    fwd, bwd = split_forward_backward(g, 2)
    seeds = [np.ones((2, 4)) * 0.3, np.asarray(2.0)]
    joint = interpret(g, x, w, *seeds)
    outs = tn.compile(fwd)(x, w)
    by_name = {"x0": x, "x1": w, "grad_out0": seeds[0], "grad_out1": seeds[1]}
    extra = [by_name[n] for n in bwd.meta.seed_names + bwd.meta.input_names]
    grads = tn.compile(bwd)(*outs[2:], *extra)
    for a, b in zip(list(outs[:2]) + list(grads), joint):
        np.testing.assert_allclose(a, b, rtol=1e-12)
