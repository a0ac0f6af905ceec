"""split_concat_matmuls: a loop body's `concat([x, h]) @ W` becomes `x @ W[:D] + h @ W[D:]`
(the x part then hoisted out of the loop, the h part the recurrent step GEMM) -- by structure,
against the reference interpreter, and API.md's MGU against its NumPy equations (complex-step
gradients) on both backends."""

import numpy as np
import pytest
from cell_fuzz import check_case, make_case, make_cell
from cell_reference import complex_step_grads, run
from pass_check import assert_same
from scan_bodies import sigmoid

import tapernn as tn
from tapernn import nn
from tapernn import passes as P
from tapernn.passes.split_concat import split_concat_matmuls
from tapernn.scan_rebatch import rebatch

T, B, D, H = 4, 3, 2, 5


def _loop(step, carries, xs, invariants, names=None):
    """The traced graph of a scan of `step` over `xs` (carries first, then the ys)."""
    body = tn.trace(step, *carries, *[x[0] for x in xs], *invariants)
    n_c, n_x = len(carries), len(xs)

    def fn(*vs):
        r = tn.scan(body, vs[:n_c], vs[n_c : n_c + n_x], vs[n_c + n_x :])
        return [*r.carries, *r.ys]

    return tn.trace(fn, *carries, *xs, *invariants, names=names)


def mgu_step(h, x, w_f, b_f, w_h, b_h):
    f = tn.sigmoid(tn.concat([x, h], axis=-1) @ w_f + b_f)
    g = tn.tanh(tn.concat([x, f * h], axis=-1) @ w_h + b_h)
    h2 = (1 - f) * h + f * g
    return [h2, h2]


def mgu_arrays(rng, dtype=np.float64):
    shapes = [(B, H), (T, B, D), (D + H, H), (H,), (D + H, H), (H,)]
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _scan(graph):
    (s,) = [n for n in graph.nodes if n.op == "scan"]
    return s


def test_the_mgu_loop_gets_one_product_per_part_each_over_a_block_of_rows():
    arrays = mgu_arrays(np.random.default_rng(0))
    names = ["h", "xs", "w_f", "b_f", "w_h", "b_h"]
    g = _loop(mgu_step, arrays[:1], arrays[1:2], arrays[2:], names)
    out = split_concat_matmuls(g)
    s = _scan(out)
    body = s.attrs["body"]
    products = [n for n in body.nodes if n.op == "matmul"]
    assert len(products) == 4 and not any(p.inputs[0].op == "concat" for p in products)
    # every product's weight: a new invariant, outside a view of a block of w_f's / w_h's rows
    blocks = sorted((n.inputs[0].name, n.attrs["index"]) for n in s.inputs if n.op == "getitem")
    rows = [(("s", 0, D, None),), (("s", D, D + H, None),)]
    assert blocks == [("w_f", r) for r in rows] + [("w_h", r) for r in rows]
    assert not any(n.name in ("w_f", "w_h") for n in s.inputs)  # (the whole W: no longer read)
    assert split_concat_matmuls(out) is out  # nothing left to split
    # the pipeline then hoists both x parts out of the loop: the body keeps the two products
    # of carried values (h and f * h), the recurrent step GEMMs
    done, _ = P.run_passes(g, P.DEFAULT)
    body = _scan(done).attrs["body"]
    carried = {body.inputs[0]}
    for n in body.nodes:
        if any(i in carried for i in n.inputs):
            carried.add(n)
    products = [n for n in body.nodes if n.op in ("matmul", "packed_matmul")]
    assert len(products) == 2 and all(p.inputs[0] in carried for p in products)
    outside = [n for n in done.nodes if n.op == "matmul"]
    assert outside and outside[0].inputs[0].shape == (T * B, D)


def test_split_loops_compute_what_the_interpreter_computes_with_gradients():
    rng = np.random.default_rng(1)
    arrays = mgu_arrays(rng)
    g = _loop(mgu_step, arrays[:1], arrays[1:2], arrays[2:])
    assert_same(g, [split_concat_matmuls], arrays)
    assert_same(g, P.DEFAULT, arrays)
    full = tn.grad(g, wrt=list(g.inputs))
    seeds = [rng.standard_normal(o.shape) for o in g.outputs]
    assert_same(full, [split_concat_matmuls], arrays + seeds)
    done = assert_same(full, P.DEFAULT, arrays + seeds)
    # split after grad: the reverse loop's d[x, h] = dz @ W^T by its column blocks too, so
    # dx leaves the loop (one GEMM after it) and dh = dz @ W[D:]^T is its step GEMM
    back = next(n for n in done.nodes if n.op == "scan" and n.attrs["reverse"])
    products = [n for n in back.attrs["body"].nodes if n.op in ("matmul", "packed_matmul")]
    assert [p.shape for p in products] == [(B, H), (B, H)]
    assert any(n.op == "matmul" and n.shape == (T * B, D) for n in done.nodes)


def test_three_parts_and_feature_major_concats_on_axis_0():
    rng = np.random.default_rng(2)

    def three(h, c, x, w):  # x part time-parallel, h and c carried: three products
        z = tn.concat([h, x, c], axis=-1) @ w
        return [tn.tanh(z[:, :H]), tn.sigmoid(z[:, H:]), z]

    arrays = [rng.standard_normal(s) for s in [(B, H), (B, H), (T, B, D), (2 * H + D, 2 * H)]]
    g = _loop(three, arrays[:2], arrays[2:3], arrays[3:])
    out = assert_same(g, [split_concat_matmuls], arrays)
    body = _scan(out).attrs["body"]
    assert [n.op for n in body.nodes if n.op in ("matmul", "add", "add_n")] == ["matmul"] * 3 + [
        "add_n"
    ]

    def feature(h, x, u):  # (n, B) values: U @ [x; h]
        h2 = tn.tanh(u @ tn.concat([x, h], axis=0))
        return [h2, h2]

    arrays = [rng.standard_normal(s) for s in [(H, B), (T, D, B), (H, D + H)]]
    g = _loop(feature, arrays[:1], arrays[1:2], arrays[2:])
    out = assert_same(g, [split_concat_matmuls], arrays)
    s = _scan(out)
    assert [n.attrs["index"] for n in s.inputs if n.op == "getitem"] == [
        (("s", None, None, None), ("s", 0, D, None)),
        (("s", None, None, None), ("s", D, D + H, None)),
    ]
    assert_same(g, P.DEFAULT, arrays)


def test_a_concat_of_carried_parts_alone_stays_one_product():
    rng = np.random.default_rng(3)

    def step(h, c, x, w):  # (both parts carried: one GEMM is better than two)
        h2 = tn.tanh(tn.concat([h, c], axis=-1) @ w + x)
        return [h2, h2 * c, h2]

    arrays = [rng.standard_normal(s) for s in [(B, H), (B, H), (T, B, H), (2 * H, H)]]
    g = _loop(step, arrays[:2], arrays[2:3], arrays[3:])
    assert split_concat_matmuls(g) is g


class MGU(nn.Cell):  # API.md section 3, as written there
    state_names = ("h",)

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w_f = self.parameter("w_f", (input_size + hidden_size, hidden_size))
        self.b_f = self.parameter("b_f", (hidden_size,), init="normal")
        self.w_h = self.parameter("w_h", (input_size + hidden_size, hidden_size))
        self.b_h = self.parameter("b_h", (hidden_size,), init="normal")

    def step(self, x, h):
        f = tn.sigmoid(tn.concat([x, h], axis=-1) @ self.w_f + self.b_f)
        g = tn.tanh(tn.concat([x, f * h], axis=-1) @ self.w_h + self.b_h)
        return (1 - f) * h + f * g


def mgu_step_numpy(p, x, h):
    """MGU's equations, one step (complex arrays too: the gradient by complex steps)."""
    f = sigmoid(np.concatenate([x, h], -1) @ p["w_f"] + p["b_f"])
    g = np.tanh(np.concatenate([x, f * h], -1) @ p["w_h"] + p["b_h"])
    return ((1 - f) * h + f * g,)


@pytest.mark.parametrize(
    "backend, layout", [("numpy", "batch"), ("numpy", "feature"), ("numba", "batch")]
)
def test_mgu_matches_its_equations_on_both_backends(backend, layout):
    """(numba: ~6 s of kernel compiles with an empty kernel cache; warm, under a second.)"""
    before = tn.get_backend()
    tn.set_backend(backend)
    try:
        tn.manual_seed(4)
        rng = np.random.default_rng(4)
        model = nn.Sequencer(MGU(D, H))
        model.set_plan_options(tn.PlanOptions(layout=layout))
        xs, seed = rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H))
        params = {n.split(".")[-1]: p.data.copy() for n, p in model.named_parameters().items()}
        want, _ = run(mgu_step_numpy, params, xs, 1, H)
        grads = complex_step_grads(mgu_step_numpy, params, xs, 1, H, seed)
        for _ in range(3):  # (numba runs its kernels from the second call)
            model.zero_grad_parameters()
            np.testing.assert_allclose(model.forward(xs), want, rtol=0, atol=1e-12)
            np.testing.assert_allclose(model.backward(xs, seed), grads["input"], atol=1e-12)
            for name, p in model.named_parameters().items():
                got, ref = p.grad, grads[name.split(".")[-1]]
                np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12, err_msg=name)
        # split before grad (reported): the backward is derived from the split loop
        notes = model.compile_report().notes
        assert any("split_concat_matmuls" in n for n in notes)
        assert any(f"{layout}-major" in n for n in notes), notes
    finally:
        tn.set_backend(before)


def test_mgu_gradcheck_and_float32():
    tn.manual_seed(5)
    rng = np.random.default_rng(5)
    model = nn.Sequencer(MGU(D, H))
    xs = rng.standard_normal((T, B, D))
    target = rng.standard_normal((T, B, H))
    assert tn.testing.gradcheck_module(model, nn.MSECriterion(), xs, target)
    want = model.forward(xs).copy()
    model.astype(np.float32)
    got = model.forward(xs.astype(np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rebatch_takes_an_ellipsis_slice_of_the_batch_rows():
    """`a[..., :H]` (hqa19's coupled-gate LSTM) keeps every row: the batch split's bodies are
    row-wise (it said "getitem across rows" before, and the loop ran on one thread)."""

    def step(h, x, w):
        z = x @ w
        h2 = tn.tanh(z[..., :H]) * h + z[..., H:]
        return [h2, h2]

    body = tn.trace(step, np.zeros((4, H)), np.zeros((4, D)), np.zeros((D, 2 * H)))
    half = rebatch(body, 1, 1, 2)
    assert not isinstance(half, str), half
    assert [o.shape for o in half.outputs] == [(2, H), (2, H)]
    rows = tn.trace(lambda h, x: [h[..., 1:3, :] * x[:2], h], np.zeros((4, H)), np.zeros((4, H)))
    assert isinstance(rebatch(rows, 1, 1, 2), str)  # (an Ellipsis covering no axis: rows cut)


# seeds whose case splits a loop's concatenated operand (of the first 40 from 10,000)
SPLIT_SEEDS = [10001, 10005, 10008, 10009, 10011, 10017, 10019, 10021, 10024, 10030]


@pytest.mark.parametrize("seed", SPLIT_SEEDS)
def test_random_cells_with_concatenated_gemm_operands(seed):
    """tests/cell_fuzz.py's cells written with concat([x, s, ...]) @ W (tools/fuzz_cells.py
    --concat runs many): values against NumPy, gradients against the pass-free program."""
    case = make_case(seed, concat=True)
    cells = [make_cell(s, p) for s, p in zip(case.cells, case.params)]
    model = nn.Sequencer(cells[0] if len(cells) == 1 else nn.Sequential(*cells))
    model.forward(case.x)
    assert any("split_concat_matmuls" in n for n in model.compile_report().notes)
    try:
        check_case(case)
    except BaseException:
        print(case.describe())
        raise
