"""A short gate loop's count hidden from LLVM (loop_values.loop_count, numba_intrinsics.opaque;
BENCHMARKS.md "hgate5"): which step loops get it (a short loop evaluating exp / tanh / sigmoid
over few arrays; not a long one, not one without vecmath, not one whose overlap checks LLVM
would refuse), that it takes effect (the (1, 5, 5) FastLSTM forward loop's 10 gate sigmoids
in packed divisions instead of scalar ones), and that the kernels give the same bits as the
same models compiled without it (every count written in: the kernels before) -- forward, input
and parameter gradients, float32 and float64, gates saturated, NaN and Inf in the input --
and the NumPy backend's values to 1e-12 in float64. Cold: 4 models' kernels and 2 loop kernels
compiled anew, ~40 s (one, FastLSTM (1, 5, 5) float32's, test_small_trips' too)."""

import re

import numpy as np
import pytest
from conftest import optimised_subprocess

import tapernn as tn
from tapernn import nn
from tapernn.backends import loop_values, numba_available, numba_interleave

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("numba_now"),  # (conftest: kernels compiled at first calls)
]
SIGMOID = ["l9_0 = buf6[0, (10 + i1)]", "v9_0 = vm_sigmoid(l9_0)", "buf8[i0, i1] = v9_0"]


def test_a_short_vecmath_loop_over_few_arrays_hides_its_count():
    assert loop_values.loop_count(10, SIGMOID) == "opaque(10)"
    assert loop_values.loop_count(20, ["v = vd_tanh(x)"]) == "opaque(20)"  # (float64's)
    assert loop_values.loop_count(5, ["t = VM_EXP_HI * l0"]) == "opaque(5)"  # (written inline)
    assert loop_values.loop_count(loop_values.SHORT[0], SIGMOID) == str(loop_values.SHORT[0])
    assert loop_values.loop_count(10, ["buf8[i0, i1] = buf6[0, i1] * arg2[i1]"]) == "10"
    # a matmul's reduction and a sum's `+=` store: 2 stored arrays x 3 others + 1 = 7 checks
    gru = ["acc = ZERO_float32", "for kk in range(5):", "    acc += buf1[0, kk] * arg3[kk, i1]"]
    gru += ["buf3[i0, i1] = acc", "buf4[i0, i1] += vm_sigmoid(arg1[t, 0, i1] + buf3[0, i1])"]
    assert loop_values.loop_count(10, gru) == "opaque(10)"
    # an LSTM cell update: 4 stored arrays, 5 others: 6 + 20 checks, more than LLVM takes
    cell = [f"buf{k}[i0, i1] = vm_tanh(arg{k}[i1] * buf9[0, i1])" for k in range(4)]
    assert loop_values.loop_count(5, cell + ["x = buf7[0, i1]"]) == "5"
    assert loop_values.loop_count(5, cell[:2]) == "opaque(5)"  # (2 stored, 3 others: 7)


def _train(cell, shape, dtype, x, backend="numba"):
    """[forward output, input gradient, parameter gradients...] after 3 steps of a fresh
    Sequencer(cell(H, H)) on x (T, B, H), and the model."""
    g = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    tn.manual_seed(0)
    m = nn.Sequencer(getattr(nn, cell)(shape[2], shape[2])).astype(dtype)
    m.set_plan_options(tn.PlanOptions(backend=backend))
    for _ in range(3):
        m.zero_grad_parameters()
        y = np.array(m.forward(x))
        gx = np.array(m.backward(x, g))
    return [y, gx, *(p.grad.copy() for p in m.named_parameters().values())], m


def _loops(m):
    pair = m._runtime.last.training_pair
    return [
        loop for c in (pair.forward, pair.backward) for loop in c.program_kernel.handle.shared.loops
    ]


@pytest.mark.parametrize(
    "cell, shape, dtype", [("FastLSTM", (5, 1, 5), "float32"), ("GRU", (3, 4, 5), "float64")]
)
def test_the_same_bits_as_every_count_written_in(cell, shape, dtype, monkeypatch):
    if dtype == "float64":  # (first: the NumPy backend's values, finite inputs)
        x = np.random.default_rng(8).standard_normal(shape) * 3
        got, _ = _train(cell, shape, dtype, x)
        want, _ = _train(cell, shape, dtype, x, backend="numpy")
        for u, v in zip(got, want):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    x = (np.random.default_rng(7).standard_normal(shape) * 4).astype(dtype)  # (saturated)
    x[1, 0, 2], x[2, -1, 0], x[2, 0, 1] = np.nan, np.inf, -np.inf
    got, mine = _train(cell, shape, dtype, x)
    assert any("range(opaque(10))" in loop.source for loop in _loops(mine))
    monkeypatch.setattr(loop_values, "SHORT", [0])  # (the old texts)
    want, old = _train(cell, shape, dtype, x)
    assert not any("opaque(" in loop.source for loop in _loops(old))
    assert len(got) == len(want) and np.isnan(got[0]).any()
    for u, v in zip(got, want):
        assert u.dtype == dtype and np.array_equal(u, v, equal_nan=True)


def _divisions(loop, text: str) -> tuple[int, int]:
    """(packed, scalar) divisions in the machine code of kernel `text` (loop kernel `loop`'s
    or a variant; a fresh dispatcher: numba's cached code has no assembly to inspect)."""
    from numba import njit

    from tapernn.backends import numba_backend

    fresh = njit(error_model="numpy", nogil=True)(numba_backend._load(text).py_func)
    (key,) = loop.types
    with numba_interleave.small_trips(text):
        fresh.compile(loop.signature(key))
    asm = fresh.inspect_asm(fresh.signatures[0])
    return len(re.findall(r"\bvdivps\b", asm)), len(re.findall(r"\bvdivss\b", asm))


def test_the_tutorial_gate_sigmoids_are_vectorised(request, monkeypatch):
    """The (1, 5, 5) FastLSTM forward loop: its sigmoid over 10 gates in packed divisions with
    the count hidden; with it written in, LLVM unrolls the loop: 10 more scalar divisions."""
    if optimised_subprocess(request):  # (machine code at -O3 only)
        return
    from tapernn.backends import numba_program

    monkeypatch.setattr(numba_program, "ENABLED", [False])  # (the loop kernel compiled alone)
    x = np.random.default_rng(9).standard_normal((5, 1, 5)).astype("float32")
    _, m = _train("FastLSTM", (5, 1, 5), "float32", x)
    bodies = m._runtime.last.training_pair.forward.program.bodies.values()
    (loop,) = [found[2].handle.shared for found in bodies]
    assert "range(opaque(10))" in loop.source
    packed, scalar = _divisions(loop, loop.source)
    packed_old, scalar_old = _divisions(loop, loop.source.replace("range(opaque(10))", "range(10)"))
    # (a remainder loop of the hidden count may keep one scalar division of its own)
    assert packed > packed_old and scalar <= scalar_old - 9
