"""A projection's bias added inside the halves of its split GEMM (own_bias.py,
PlanOptions.bias_in_gemm, issue 19): the rewrite of the program text (which lines, and which
not), own_threads.matmul_bias against np.matmul + np.add for row and column splits and the
shapes it must leave to the plain path, and whole owned models -- FastLSTM, peephole LSTM, GRU,
odd batches, float64 and float32 -- bit for bit equal to bias_in_gemm=False and to the NumPy
equations (float64, 1e-12), with the fused call counted."""

import numpy as np
import pytest
from test_batch_split import CELLS, D, T, check_equations, train

import tapernn as tn
from tapernn import nn, own_bias, own_threads
from tapernn.backends import numba_available

SOURCE = """def program(a0, a1, a2, *, np_matmul, np_add, s1, s2):
    v5 = a0.reshape(s1)
    v8 = np_matmul(v5, a1, out=o8)
    v9 = v8.reshape(s2)
    del v8
    v10 = np_add(v9, a2, out=v9)
    del v9
    return (v10,)
"""


def test_rewrite_fuses_the_matmul_and_its_in_place_bias_add_line_for_line():
    text, n = own_bias.rewrite(SOURCE)
    assert n == 1
    lines, old = text.split("\n"), SOURCE.split("\n")
    assert len(lines) == len(old)
    assert lines[0].endswith(", np_matmul_bias):")
    assert lines[2] == "    v8 = np_matmul_bias(v5, a1, a2, s2, out=o8)"
    assert lines[5] == "    v10 = v9"
    assert [a for a, b in zip(lines, old) if a != b] == [lines[0], lines[2], lines[5]]
    # no `del`, no out=: fused too
    text, n = own_bias.rewrite(SOURCE.replace("    del v8\n", "").replace(", out=o8", ""))
    assert n == 1 and "np_matmul_bias(v5, a1, a2, s2, out=None)" in text


@pytest.mark.parametrize(
    "change",
    [
        ("np_add(v9, a2, out=v9)", "np_add(v9, a2, out=v7)"),  # not in place
        ("np_add(v9, a2, out=v9)", "np_multiply(v9, a2, out=v9)"),  # not an add
        ("v9 = v8.reshape(s2)", "v9 = v7.reshape(s2)"),  # another array's view
        ("np_add(v9, a2, out=v9)", "np_add(v9, v9, out=v9)"),  # adds itself
        ("    del v8\n", "    v11 = v8.sum()\n"),  # something in between
    ],
)
def test_rewrite_leaves_other_lines(change):
    text, n = own_bias.rewrite(SOURCE.replace(*change))
    assert n == 0 and text == SOURCE.replace(*change)


def run_owned(fn):
    """fn() inside an owned call (the split paths on)."""
    return own_threads.run(lambda _: fn(), None)


@pytest.mark.parametrize("m, k, n", [(37, 5, 8), (6, 5, 41), (1, 4, 9)])
@pytest.mark.parametrize("bias_shape", ["row", "1row", "full", "column"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matmul_bias_equals_matmul_then_add(m, k, n, bias_shape, dtype, rng, monkeypatch):
    monkeypatch.setattr(own_threads, "MIN_FLOPS", 0.0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    shape = {"row": (n,), "1row": (1, 1, n), "full": (m, n), "column": (m, 1)}[bias_shape]
    bias = rng.standard_normal(shape).astype(dtype)
    view = (m, 1, n)  # (what the program reshapes the product to before the add)
    b3 = bias if bias.ndim != 2 else bias.reshape(m, 1, -1)
    # the lines it replaces, owned (the split GEMM: OpenBLAS may round a half otherwise than
    # the whole product, own_threads.py)
    want = run_owned(lambda: own_threads.matmul(a, b)).reshape(view)
    np.add(want, b3, out=want)
    before = own_threads.SPLIT_GEMMS[0]
    out = np.full((m, n), np.nan, dtype)
    got = run_owned(lambda: own_threads.matmul_bias(a, b, b3, view, out=out))
    assert got is out
    np.testing.assert_array_equal(out.reshape(view), want)
    assert own_threads.SPLIT_GEMMS[0] - before == 1
    # outside an owned call: the plain lines
    out2 = np.full((m, n), np.nan, dtype)
    own_threads.matmul_bias(a, b, b3, view, out=out2)
    plain = np.matmul(a, b).reshape(view)
    np.testing.assert_array_equal(out2.reshape(view), np.add(plain, b3, out=plain))
    got = run_owned(lambda: own_threads.matmul_bias(a, b, b3, view))
    np.testing.assert_array_equal(got, out)


needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")


@pytest.fixture
def numba_now(monkeypatch):
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    monkeypatch.setattr(own_threads, "MIN_FLOPS", 0.0)  # every 2-D time-batched GEMM splits
    before = tn.get_backend()
    tn.set_backend("numba")
    yield
    tn.set_backend(before)


def model(make, fuse, own="on", dtype="float64"):
    tn.manual_seed(0)
    m = nn.Sequencer(make()).astype(dtype)
    m.set_plan_options(
        tn.PlanOptions(
            layout="batch",
            batch_split="on",
            own_threads=own,
            bias_in_gemm=fuse,
            gemm_in_slab=False,  # (own_room's RoomGemm would take the fused line: its tests)
        )
    )
    return m


@needs_numba
@pytest.mark.usefixtures("numba_now")
@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_owned_models_bit_for_bit_with_and_without(name, dtype, rng):
    make, step, n, H = CELLS[name]
    batch = 7  # (odd: halves 4 | 3)
    x = rng.standard_normal((T, batch, D)).astype(dtype)
    g = rng.standard_normal((T, batch, H)).astype(dtype)
    a, b = model(make, True, dtype=dtype), model(make, False, dtype=dtype)
    before = own_bias.FUSED[0]
    for _ in range(3):
        got, want = train(a, x, g), train(b, x, g)
        for u, v in zip(got[:2], want[:2]):
            np.testing.assert_array_equal(u, v)
        for k in got[2]:
            np.testing.assert_array_equal(got[2][k], want[2][k], err_msg=k)
        for m in (a, b):  # the next call sees other weights
            for p in m.parameters():
                p.data[...] += 0.01
    fwd = a._runtime.last.training_pair.forward.program
    # (FastLSTM's projection is one GEMM and one bias add; the LSTM's and GRU's add their
    # biases to slices of the product into other buffers: not this pattern, left alone)
    fused = name == "fastlstm"
    assert (own_bias.FUSED[0] > before) == fused
    assert ("np_matmul_bias(" in fwd.source) == fused
    assert "np_matmul_bias" not in b._runtime.last.training_pair.forward.program.source
    if dtype == "float64":
        for m in (a,):
            for p in m.parameters():
                p.data[...] -= 0.03
        got = train(a, x, g)
        check_equations(a, step, n, x, g, got, rng)


@needs_numba
@pytest.mark.usefixtures("numba_now")
def test_not_owned_programs_are_not_rewritten(rng):
    make, *_ = CELLS["fastlstm"]
    m = model(make, True, own="off")
    x, g = rng.standard_normal((T, 6, D)), rng.standard_normal((T, 6, 130))
    train(m, x, g)
    assert "np_matmul_bias" not in m._runtime.last.training_pair.forward.program.source


SUM_SOURCE = """def program(a0, a1, a2, *, np_matmul, np_add_reduce, s1, _dest):
    v4 = a0.transpose(s1)
    v5 = np_matmul(v4, a1, out=_dest[1])
    v6 = np_add_reduce(a2, s1, None, keepdims=False)
    return (v5, v6)
"""


def test_rewrite_fuses_a_gemm_and_the_next_lines_column_sum():
    text, n = own_bias.rewrite(SUM_SOURCE)
    lines = text.split("\n")
    assert n == 1 and len(lines) == len(SUM_SOURCE.split("\n"))
    assert lines[0].endswith(", np_matmul_sum):")
    assert lines[2] == "    v5, v6 = np_matmul_sum(v4, a1, a2, s1, out=_dest[1])"
    assert lines[3] == "    pass"
    for change in [
        ("np_add_reduce(a2,", "np_add_reduce(v5,"),  # sums the product itself
        ("keepdims=False", "keepdims=True"),
        ("np_add_reduce(a2, s1", "np_maximum_reduce(a2, s1"),
    ]:
        text, n = own_bias.rewrite(SUM_SOURCE.replace(*change))
        assert n == 0 and text == SUM_SOURCE.replace(*change), change


@pytest.mark.parametrize("m, k, n", [(37, 5, 8), (6, 5, 41)])
@pytest.mark.parametrize(
    "xshape, axes", [((4, 9, 11), (0, 1)), ((36, 11), 0), ((4, 9, 11), (-3, -2)), ((36, 11), 1)]
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matmul_sum_equals_the_lines_it_replaces(m, k, n, xshape, axes, dtype, rng, monkeypatch):
    monkeypatch.setattr(own_threads, "MIN_FLOPS", 0.0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    x = rng.standard_normal(xshape).astype(dtype)
    want_r = run_owned(lambda: own_threads.matmul(a, b))
    want_s = np.add.reduce(x, axes, None, keepdims=False)
    for owned in (True, False):
        out = np.full((m, n), np.nan, dtype)
        call = lambda out=out: own_threads.matmul_sum(a, b, x, axes, out=out)
        r, s = run_owned(call) if owned else call()
        assert r is out
        np.testing.assert_array_equal(r, want_r if owned else np.matmul(a, b))
        np.testing.assert_array_equal(s, want_s)
        r, s = run_owned(lambda: own_threads.matmul_sum(a, b, x, axes))  # (out made)
        np.testing.assert_array_equal(r, want_r)
        np.testing.assert_array_equal(s, want_s)


@needs_numba
@pytest.mark.usefixtures("numba_now")
def test_the_fastlstm_backward_sums_its_bias_gradient_in_the_gemm_halves(rng):
    make, *_ = CELLS["fastlstm"]
    a, b = model(make, True), model(make, False)
    x, g = rng.standard_normal((T, 9, D)), rng.standard_normal((T, 9, 130))
    for _ in range(2):
        got, want = train(a, x, g), train(b, x, g)
    for k in got[2]:
        np.testing.assert_array_equal(got[2][k], want[2][k], err_msg=k)
    assert "np_matmul_sum(" in a._runtime.last.training_pair.last_backward.program.source
    assert "np_matmul_sum(" not in b._runtime.last.training_pair.last_backward.program.source
