"""MaskZero inside the numba step loops (issue 19, hmask): with `cell.mask_zero()` or
`nn.MaskZero(cell, 1)` the forward loop splits its batch (the zero-row test, a row max of |x|,
leaves the loop time-batched: push_out; a row reduction is row-wise: scan_rebatch) and each
half of both loops is ONE numba call (the row selects translated: backends/step_selects.py).
Against the Python halves and the unsplit loop (bit for bit), the NumPy backend, and masked
NumPy equations written here (rows whose input is all zeros output 0; mask_zero() also resets
their state), float64 to 1e-12 with complex-step gradients, float32; zero rows at the first,
a middle and the last step, a row of padding only, all rows or no row zero, B odd and even,
remember() across calls."""

import numpy as np
import pytest
from test_batch_split import TOL, directional, equal, train
from test_step_loop import CELLS, D, model, notes, ran, translated

import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_available, step_selects
from tapernn.backends.numba_backend import Unsupported

pytestmark = [
    pytest.mark.skipif(not numba_available(), reason="numba not installed"),
    pytest.mark.usefixtures("packed_on"),  # (AVX2 too: conftest.packed_on)
    pytest.mark.usefixtures("numba_now"),  # (conftest: kernels compiled at first calls)
]
T = 5


def masked(name, how):
    make = CELLS[name][0]
    return lambda: make().mask_zero() if how == "cell" else nn.MaskZero(make(), 1)


def padded(rng, batch, dtype=np.float64):
    """(T, batch, D) inputs with zero rows at the first, a middle and the last step (left
    padding of row 0, a zero step inside row 3, the last step of rows 2 and batch - 1) and a
    row of padding only (the second half's first row)."""
    x = rng.standard_normal((T, batch, D))
    x[:2, 0] = 0
    x[2, 3] = 0
    x[T - 1, [2, batch - 1]] = 0
    x[:, (batch + 1) // 2] = 0
    return x.astype(dtype)


def equations(step, p, xs, n, how, state=None):
    """Outputs and final state of the masked cell by its NumPy step equations: a row whose
    input is all zeros outputs 0; with how == "cell" its new state is 0 too."""
    batch, H = xs.shape[1], p["H"]
    state = state or tuple(np.zeros((batch, H), xs.dtype) for _ in range(n))
    ys = np.zeros((len(xs), batch, H), xs.dtype)
    for t in range(len(xs)):
        pad = np.array([not np.any(r.real) for r in xs[t]])
        new = step(p, xs[t], *state)
        ys[t] = new[0]
        ys[t, pad] = 0
        if how == "cell":
            for s in new:
                s[pad] = 0
        state = new
    return ys, state


def cell_params(m, dtype=None):
    """Copies of the masked cell's parameters by the names its step equations read."""
    cell = m.module._children["0"] if isinstance(m.module, nn.MaskZero) else m.module
    return {k: v.data.astype(dtype or v.data.dtype) for k, v in cell.named_parameters().items()}


def check_masked(m, step, n, how, x, g, got, rng):
    """`got` (y, dx, grads) of model m against the equations: y at TOL; dx and every parameter
    gradient along random directions against complex steps (together and each alone)."""
    p = cell_params(m)
    y, gx, pg = got
    p["H"] = y.shape[-1]
    np.testing.assert_allclose(y, equations(step, p, x, n, how)[0], **TOL)
    assert np.all(y[~np.any(x, -1)] == 0)
    names = [k for k in p if k != "H"]
    arrays = dict({k: p[k] for k in names}, input=x)
    directions = {k: rng.standard_normal(v.shape) for k, v in arrays.items()}

    def f(arr):
        return equations(step, dict({k: arr[k] for k in names}, H=p["H"]), arr["input"], n, how)[0]

    grads = dict(
        {k: next(v for j, v in pg.items() if j.endswith("." + k)) for k in names}, input=gx
    )
    want = directional(f, arrays, directions, g)
    assert np.isclose(sum(np.sum(grads[k] * directions[k]) for k in arrays), want, **TOL)
    for k in names:
        one = {j: directions[j] * (j == k) for j in arrays}
        np.testing.assert_allclose(
            np.sum(grads[k] * directions[k]), directional(f, arrays, one, g), **TOL, err_msg=k
        )
    if how == "cell":  # (wrapped, a masked step's input still feeds the state: Torch7's MaskZero)
        assert np.all(gx[~np.any(x, -1)] == 0)


@pytest.mark.parametrize(
    "name, how", [("fastlstm", "cell"), ("fastlstm", "wrap"), ("lstm", "cell"), ("gru", "cell")]
)
def test_masked_loops_translated_bit_for_bit_and_equations(name, how, rng):
    """Both loops split, each half one numba call (on main: the forward did not split -- "sum
    not known to be row-wise" --, the reverse halves ran in Python -- "call of f_cast")."""
    _, step, n, H = CELLS[name]
    make = masked(name, how)
    x, g = padded(rng, 17), rng.standard_normal((T, 17, H))
    a, b, c = model(make, True), model(make, False), model(make, True, split="off")
    for _ in range(3):  # call 1 runs the full loop, 2 the Python halves (compiles), then numba
        equal(train(a, x, g), train(b, x, g))
    before = ran()
    got = train(a, x, g)
    assert ran() - before == 4, notes(a)  # two loops, two halves each
    assert translated(a) == 2, notes(a)
    assert all("batch split over 2 threads" in k for k in notes(a)), notes(a)
    equal(got, train(b, x, g))
    equal(got, train(c, x, g))
    tn.set_backend("numpy")
    d = model(make, True)
    equal(got, train(d, x, g), exact=False)
    check_masked(a, step, n, how, x, g, got, rng)


@pytest.mark.parametrize("name, how", [("fastlstm", "cell"), ("gru", "wrap")])
def test_float32_masked_bit_for_bit(name, how, rng):
    _, step, n, H = CELLS[name]
    make = masked(name, how)
    x = padded(rng, 16, np.float32)
    g = rng.standard_normal((T, 16, H)).astype(np.float32)
    a, b = model(make, True, "float32"), model(make, False, "float32")
    for _ in range(3):
        equal(train(a, x, g), train(b, x, g))
    got = train(a, x, g)
    assert translated(a) == 2, notes(a)
    equal(got, train(b, x, g))
    assert got[0].dtype == np.float32 and np.all(got[0][~np.any(x, -1)] == 0)
    p = cell_params(a, np.float64)
    want = equations(step, dict(p, H=H), x.astype(np.float64), n, how)[0]
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)


def test_all_rows_or_no_row_zero(rng):
    """A batch of padding only: outputs, state and every gradient 0 (mask_zero()); a batch with
    no zero row: the unmasked cell's results."""
    H = CELLS["fastlstm"][3]
    a = model(masked("fastlstm", "cell"), True)
    plain = model(CELLS["fastlstm"][0], True)
    g = rng.standard_normal((T, 16, H))
    zero = np.zeros((T, 16, D))
    full = rng.standard_normal((T, 16, D))
    for _ in range(3):
        y, gx, grads = train(a, zero, g)
        assert not np.any(y) and not np.any(gx)
        assert not any(np.any(v) for v in grads.values())
        equal(train(a, full, g), train(plain, full, g), exact=False)
    assert translated(a) == 2, notes(a)


def test_remembered_across_calls_with_masked_rows(rng):
    """remember("both"): three chunks with padded rows, one model, = the equations over the
    whole sequence (the state a masked row was reset to carries into the next chunk)."""
    _, step, n, H = CELLS["gru"]
    a = model(masked("gru", "cell"), True)
    a.remember("both")
    p = dict(cell_params(a), H=H)
    chunks = [padded(rng, 17) for _ in range(4)]
    state = None
    for x in chunks:
        y = np.array(a.forward(x))
        want, state = equations(step, p, x, n, "cell", state)
        np.testing.assert_allclose(y, want, **TOL)
    assert translated(a) >= 1, notes(a)  # (the forward's halves: the backward never ran)


def test_row_max_translated_only_as_the_zero_test():
    """The row max is exact but for which of +/-0 (or NaN) it keeps: translated only where its
    one use is `== 0`; any other use keeps the Python loop."""
    from tapernn.ops.registry import get_op

    defaults = {
        "f_max": get_op("max").forward,
        "k0": (0,),
        "k1": (1,),
        "k2": True,
        "b3": np.zeros((4, 1)),
        "c0": np.array(0.0),
        "c1": np.array(1.0),
    }
    args = ["a0", "axis=k1", "keepdims=k2", "out=b3"]
    test = [("call", "v2", "np_equal", ["v1", "c0", "out=b3"])]
    assert step_selects.call("v1", "f_max", args, defaults, test) == ["v1 = _rowmax(a0, b3)"]
    for later in (
        [("call", "v2", "np_equal", ["v1", "c1", "out=b3"])],  # (== 1: the value shows)
        [("call", "v2", "np_add", ["v1", "a0"])],
        [("return", "", "", ["v1"])],
        [*test, ("copy", "w0", "", ["v1"])],
    ):
        with pytest.raises(Unsupported, match="call of f_max"):
            step_selects.call("v1", "f_max", args, defaults, later)
    with pytest.raises(Unsupported, match="call of f_max"):  # (over another axis)
        step_selects.call("v1", "f_max", ["a0", "axis=k0", "out=b3"], defaults, test)
    with pytest.raises(Unsupported, match="call of f_sigmoid"):
        step_selects.call("v1", "f_sigmoid", ["a0"], {"f_sigmoid": get_op("sigmoid").forward}, [])


@pytest.mark.parametrize("how", ["cell", "wrap"])
def test_tiny_sizes_keep_the_whole_program_kernel(how, rng):
    """At B = 3, H = 5 the masked model runs numba whole-program kernels (loop_source lowers
    the row max, NaN kept): = the NumPy backend and the equations; a row holding a NaN is not
    padding (its NaN shows), a zero row still outputs 0."""
    from cell_reference import fastlstm_step

    x = rng.standard_normal((4, 3, D))
    x[0, 0] = x[2, 1] = x[3, 2] = 0
    x[1, 2, 1] = np.nan
    g = rng.standard_normal((4, 3, 5))
    got = {}
    for backend in ("numpy", "numba"):
        tn.set_backend(backend)
        tn.manual_seed(0)
        cell = nn.FastLSTM(D, 5)
        m = nn.Sequencer(cell.mask_zero() if how == "cell" else nn.MaskZero(cell, 1))
        for _ in range(2):
            got[backend] = train(m, x, g)
    assert "forward: numba whole-program kernel" in str(m.compile_report())
    equal(got["numba"], got["numpy"], exact=False)
    y = got["numba"][0]
    p = dict(cell_params(m), H=5)
    np.testing.assert_allclose(y, equations(fastlstm_step, p, x, 2, how)[0], **TOL)
    assert np.all(y[~np.any(x, -1)] == 0) and np.isnan(y[1, 2]).all()
