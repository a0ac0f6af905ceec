"""One op, one place: an elementwise op defined here alone (one `register` call, nothing edited
anywhere else) is traced, gradchecked, fused, batched over column blocks, lowered to source,
run equal to the reference interpreter and NumPy, and drawn."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import passes as P
from tapernn.interpret import interpret
from tapernn.ops.registry import REGISTRY, register, same_shape
from tapernn.tracing import emit

OP = "softsign_for_test"


def _softsign(x, out=None):  # x / (1 + |x|)
    den = np.abs(x)
    den += 1.0
    return np.divide(x, den, out=out)


@pytest.fixture(scope="module", autouse=True)
def softsign():
    register(
        OP,
        forward=_softsign,
        shape=same_shape,
        elementwise=True,
        inplace=(0,),
        n_inputs=1,
        vjp=lambda g, y, x, wants: (g / ((1 + abs(x)) * (1 + abs(x))),),
    )
    yield
    del REGISTRY[OP]  # the op table test requires a test row for every registered op


def softsign_np(x):
    return x / (1 + np.abs(x))


def test_new_op_is_gradchecked(rng):
    assert tn.gradcheck(lambda x: emit(OP, x) * 3.0, rng.standard_normal((3, 4)))


def test_new_op_is_fused_lowered_and_runs_like_numpy(rng):
    x = rng.standard_normal((3, 4))
    g = tn.trace(lambda x: tn.tanh(emit(OP, x)) * 2.0, x)
    compiled = tn.compile(g)
    fused = [n for n in compiled.graph.nodes if n.op == "fused"]
    assert len(fused) == 1 and OP in [ins[0] for ins in fused[0].attrs["program"]]
    assert f"f_{OP}(" in compiled.source
    expected = np.tanh(softsign_np(x)) * 2.0
    np.testing.assert_allclose(compiled(x), expected, rtol=1e-14)
    np.testing.assert_allclose(interpret(g, x)[0], expected, rtol=1e-14)
    unfused = tn.compile(g, passes=[])
    assert f"f_{OP}(" in unfused.source
    np.testing.assert_allclose(unfused(x), expected, rtol=1e-14)


def test_new_op_is_batched_over_column_blocks(rng):
    x = rng.standard_normal((3, 8))

    def f(x):
        return [emit(OP, x[:, 0:4]), emit(OP, x[:, 4:8])]

    g = tn.trace(f, x)
    out, _ = P.run_passes(g, [P.batch_sliced_elementwise, P.eliminate_dead_code])
    ops = [n for n in out.nodes if n.op == OP]
    assert len(ops) == 1 and ops[0].shape == (3, 8)
    for a, b in zip(interpret(out, x), [softsign_np(x[:, :4]), softsign_np(x[:, 4:])]):
        np.testing.assert_allclose(a, b, rtol=1e-15)


def test_new_op_is_drawn(rng):
    g = tn.trace(lambda x: emit(OP, x), rng.standard_normal(3))
    assert OP in tn.to_dot(g).source
