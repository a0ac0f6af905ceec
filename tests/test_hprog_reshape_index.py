"""Whole-program kernels' reshape indices (hprog): program_source.split_reshape_map cuts each out
index into digits at the in axes' boundaries (`i // q % r`, numbers), so no division of a sum of
indices is left in a kernel, and lift_sizes(divisors=True) keeps every divisor literal (by a
number read from `dims` each is an integer division: a (5, 2, 8) GRU backward kernel ran 5x
slower, issue 19's SeqGRU regression). The maps against NumPy's reshape at every index; the
kernels' lifted text; their results against the reference interpreter and the NumPy backend."""

import itertools
import re

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.backends.program_source import split_reshape_map
from tapernn.backends.size_lift import lift_sizes
from tapernn.interpret import interpret

RESHAPES = [
    ((50, 48), (100, 24)),
    ((100, 24), (50, 48)),
    ((5, 2, 8), (10, 8)),
    ((10, 8), (5, 2, 8)),
    ((10, 8), (5, 16)),
    ((5, 16), (10, 8)),
    ((2, 6, 2), (4, 3, 2)),
    ((3, 1, 4), (12,)),
    ((12,), (3, 1, 4)),
    ((1, 6, 1, 4), (2, 3, 4, 1)),
    ((24,), (2, 3, 4)),
]
# a division of a sum of scaled indices (a flat offset: `(i0 * 24 + i1) // 48`; a sliced index
# `(8 + i0) // 4` is one index)
SUM_DIVIDED = re.compile(r"\([^()]*\*[^()]*\)\s*(//|%)")


def _positions(shape):
    return itertools.product(*(range(s) for s in shape))


@pytest.mark.parametrize(("in_shape", "out_shape"), RESHAPES)
def test_the_map_is_numpys_reshape_at_every_index(in_shape, out_shape):
    fn = split_reshape_map(in_shape, out_shape)
    assert fn is not None
    names = [f"i{d}" for d in range(len(out_shape))]
    exprs = fn(names)
    for e in exprs:  # each division divides one index
        assert not re.search(r"\)\s*(//|%)", e), e
    base = np.arange(np.prod(in_shape)).reshape(in_shape)
    viewed = base.reshape(out_shape)
    for pos in _positions(out_shape):
        env = dict(zip(names, pos))
        at = tuple(eval(e, {}, env) for e in exprs)  # (the generator's text)
        assert base[at] == viewed[pos]


def test_compound_indices_and_composed_maps():
    """Out indices that are expressions (a slice's `(1 + i0)`), and a reshape of a reshape."""
    inner = split_reshape_map((6, 8), (3, 2, 8))  # (3, 2, 8) -> its base (6, 8)
    outer = split_reshape_map((3, 2, 8), (3, 16))  # (3, 16) -> (3, 2, 8)
    base = np.arange(48).reshape(6, 8)
    view = base.reshape(3, 2, 8).reshape(3, 16)[1:, 4:]  # (2, 12)
    for a, b in _positions((2, 12)):
        exprs = inner(outer(["(1 + i0)", "(4 + i1)"]))
        at = tuple(eval(e, {}, {"i0": a, "i1": b}) for e in exprs)
        assert base[at] == view[a, b]


def test_boundaries_that_do_not_nest_keep_reshape_map():
    assert split_reshape_map((4, 3), (3, 4)) is None
    assert split_reshape_map((6, 10), (4, 15)) is None


def test_lift_sizes_keeps_divisors_when_asked():
    body = ["    for i0 in range(100):", "        a[i0 // 2, i0 % 2] = b[(i0 * 24 + 3) // 48]"]
    lifted, dims = lift_sizes(body, divisors=True)
    assert lifted[1] == "        a[i0 // 2, i0 % 2] = b[(i0 * n1 + n2) // 48]"
    assert dims == [100, 24, 3]
    assert "// n" in lift_sizes(body)[0][1]  # (the default lifts them: loop and step kernels)


def _modules():
    return {
        "GRU": lambda: nn.Sequencer(nn.GRU(3, 4)),
        "LSTM": lambda: nn.Sequencer(nn.LSTM(3, 4)),
        "SeqGRU": lambda: nn.SeqGRU(3, 4),
    }


@pytest.mark.parametrize("name", sorted(_modules()))
def test_backward_kernels_divide_single_indices_by_numbers(name):
    """The B = 2 training step's program kernels (their reshapes of (T, B, H) stacks to
    (T * B, H) rows and back): no division of a sum, no divisor read from `dims`; results
    equal the NumPy backend's to 1e-12."""
    pytest.importorskip("numba")
    T, B = 5, 2
    results = []
    tn.manual_seed(3)
    twins = [_modules()[name]() for _ in range(2)]
    twins[1].load_state_dict(twins[0].state_dict())
    rng = np.random.default_rng(0)
    x, seed = rng.standard_normal((T, B, 3)), rng.standard_normal((T, B, 4))
    for m, backend in zip(twins, ("numpy", "numba")):
        m.set_plan_options(tn.PlanOptions(backend=backend))
        for _ in range(2):
            y = m.forward(x)
            m.zero_grad_parameters()
            dx = m.backward(x, seed)
        results.append((np.array(y), np.array(dx), [np.array(p.grad) for p in m.parameters()]))
    pair = twins[1]._runtime.last.training_pair
    sources = []
    for program in (pair.forward, pair.backward):
        assert program.report.kernel.startswith("numba whole-program kernel")
        sources.append(program.program_kernel.handle.shared.source)
    assert "//" in sources[1]  # (the row reshapes' digits)
    for text in sources:
        assert not re.search(r"(//|%) n\d", text)
        assert not SUM_DIVIDED.search(text), SUM_DIVIDED.search(text)
    (want_y, want_dx, want_g), (y, dx, g) = results
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
    for a, b in zip(g, want_g):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_reshapes_after_a_loop_equal_the_interpreter():
    """A program kernel reading a loop's stack through splits, merges and a transpose of them
    (every RESHAPES kind on a (T, B, H) = (4, 3, 6) stack) equals the reference interpreter."""
    pytest.importorskip("numba")
    from scan_bodies import scanned

    T, B, H = 4, 3, 6
    z = np.zeros((B, H))
    body = tn.trace(
        lambda h, x, w: [tn.tanh(h @ w) + x, h * x], z, z, np.zeros((H, H)), names=["h", "x", "W"]
    )
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(s) for s in [(B, H), (T, B, H), (H, H)]]
    loop = scanned(body, 1, 1)

    def f(h, xs, w):
        ys = loop(h, xs, w)[1]  # (T, B, H)
        rows = tn.reshape(ys, (T * B, H))
        pairs = tn.reshape(rows, (T * B * 2, H // 2))  # a split of the last axis
        wide = tn.reshape(ys, (T, B * H))  # a merge
        back = tn.reshape(tn.transpose(wide), (B, H, T))  # a split of a transpose
        return [rows @ w, tn.sum(pairs * 2.0, axis=0), back * 3.0, tn.reshape(wide, (2, 36))]

    g = tn.trace(f, *arrays)
    c = tn.compile(g, backend="numba")
    assert c.report.kernel.startswith("numba whole-program kernel")
    for _ in range(2):
        for got, want in zip(c(*arrays), interpret(g, *arrays)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_random_reshapes_and_slices_equal_numpys():
    """400 random (in, out) shape pairs of one size (factors 1-4, 1-4 axes each), each map
    read through a random basic slice of the out shape (an index that is an expression),
    against NumPy's reshape-then-slice at every index; pairs whose boundaries do not nest
    are None (reshape_map's)."""
    rng = np.random.default_rng(50)
    mapped = 0
    for _ in range(400):
        factors = [int(f) for f in rng.integers(1, 5, size=rng.integers(1, 6))]
        shapes = []
        for _ in range(2):
            cut = sorted(rng.choice(len(factors) + 1, size=rng.integers(0, 3), replace=True))
            edges = [0, *cut, len(factors)]
            shapes.append(tuple(int(np.prod(factors[a:b])) for a, b in itertools.pairwise(edges)))
        (in_shape, out_shape) = (tuple(rng.permutation(shapes[0])), shapes[1])
        if np.prod(in_shape) != np.prod(out_shape):
            continue
        fn = split_reshape_map(in_shape, out_shape)
        if fn is None:
            continue
        mapped += 1
        starts = [int(rng.integers(0, s)) for s in out_shape]
        names = [f"i{d}" for d in range(len(out_shape))]
        exprs = fn([f"({s} + {n})" if s else n for s, n in zip(starts, names)])
        base = np.arange(np.prod(in_shape)).reshape(in_shape)
        view = base.reshape(out_shape)[tuple(slice(s, None) for s in starts)]
        for pos in _positions(view.shape):
            at = tuple(eval(e, {}, dict(zip(names, pos))) for e in exprs)  # (generated text)
            assert base[at] == view[pos], (in_shape, out_shape, starts, exprs)
    assert mapped > 200
