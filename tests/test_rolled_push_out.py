"""The rolled Sequencer's loop bodies after push-out (issue 16): no input projection in the
forward body, no weight-gradient GEMM and no concat of invariants in the backward body (they
run once per loop call); rolled == unroll=True to 1e-12 in float64 with them moved out."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn, scan_run
from tapernn.nn.runtime import runtime_of

CELLS = {"fastlstm": nn.FastLSTM, "lstm": nn.LSTM, "gru": nn.GRU}
T, B, D, H = 6, 3, 4, 5


def trained(make, unroll, dtype=np.float64, seed=0):
    tn.manual_seed(seed)
    m = nn.Sequencer(make(D, H), unroll=unroll).astype(dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    m.zero_grad_parameters()
    y = np.array(m.forward(x))
    gx = np.array(m.backward(x, g))
    return m, y, gx, {k: p.grad.copy() for k, p in m.named_parameters().items()}


def loop_bodies(m):
    """(forward, backward) lists of (compiled body, n_carry, n_xs, scan body) of the rolled
    program."""
    pair = runtime_of(m).last.training_pair
    found = []
    for program in (pair.forward, pair.backward):
        bodies = []
        for n in program.graph.nodes:
            if n.op == "scan":
                a = n.attrs
                body = scan_run._without_fixed(a["body"], a["n_carry"])
                compiled = next(iter(scan_run._BODIES[body].values()))
                bodies.append((compiled.graph, a["n_carry"], a["n_xs"], a["body"]))
        found.append(bodies)
    return found


def origins(graph, nc, nx):
    """Per node: the set of body-input kinds it depends on ("c" carry, "x" xs, "i" invariant)."""
    kind = {}
    for k, i in enumerate(graph.inputs):
        kind[i] = {"c" if k < nc else "x" if k < nc + nx else "i"}
    for n in graph.nodes:
        if n not in kind:
            kind[n] = set().union(*(kind[i] for i in n.inputs)) if n.inputs else set()
    return kind


@pytest.mark.parametrize("name", sorted(CELLS))
def test_rolled_bodies_have_no_pushable_work(name):
    m = trained(CELLS[name], False)[0]
    fwd, bwd = loop_bodies(m)
    assert len(fwd) == 1 and len(bwd) == 1
    graph, nc, nx, _ = fwd[0]
    kind = origins(graph, nc, nx)
    projections = [
        n for n in graph.nodes if n.op == "matmul" and "x" in kind[n] and "c" not in kind[n]
    ]
    assert not projections, f"forward body computes the input projection: {projections}"
    graph, nc, nx, body = bwd[0]
    kind = origins(graph, nc, nx)
    per_step = [
        n for n in graph.nodes if n.op == "matmul" and all("i" not in kind[i] for i in n.inputs)
    ]
    assert not per_step, f"backward body computes a weight-gradient GEMM: {per_step}"
    invariant = [
        n
        for n in graph.nodes
        if n.op not in ("input", "constant")
        and kind[n] <= {"i"}
        and n.op not in ("transpose", "reshape", "getitem")
    ]
    assert not invariant, f"backward body recomputes invariant work each step: {invariant}"
    # (a peephole weight's sum_b dz_t * c_t stays an (H,) carry: pushed out it would be a
    # (B, H) ys per step; the GEMM accumulations and the bias sums of returned dz leave)
    accumulating = [
        k
        for k in range(nc)
        if body.inputs[k].shape[:1] != (B,)
        and body.outputs[k] is not body.inputs[k]
        and not _peephole_sum(body, k)
    ]
    assert not accumulating, f"weight gradients still accumulated in the loop: {accumulating}"


def _peephole_sum(body, k):
    """Carry k is acc + sum(a_t * b_t) of a 1-D acc (no matmul)."""
    new, acc = body.outputs[k], body.inputs[k]
    if acc.ndim != 1 or new.op != "add" or acc not in new.inputs:
        return False
    m = new.inputs[1] if new.inputs[0] is acc else new.inputs[0]
    return m.op == "sum" and m.inputs[0].op == "mul"


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pushed_out_rolled_equals_unrolled(name, dtype):
    _, *r = trained(CELLS[name], False, dtype)
    _, *u = trained(CELLS[name], True, dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(r[0], u[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(r[1], u[1], rtol=tol, atol=tol)
    assert r[2].keys() == u[2].keys()
    for k in r[2]:
        np.testing.assert_allclose(r[2][k], u[2][k], rtol=tol, atol=tol, err_msg=k)


def _ancestors(outputs):
    seen, todo = set(), list(outputs)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.inputs)
    return seen


@pytest.mark.parametrize("name", sorted(CELLS))
def test_backward_body_computes_only_the_carried_gradient_products(name):
    """dx_t = sum over gates of dz_g,t @ W_g^T is only returned: one GEMM over the stacked dz
    after the loop (nn.LSTM writes it as a sum of four products), so every matmul left in the
    backward body feeds the carried dh."""
    m = trained(CELLS[name], False)[0]
    _, bwd = loop_bodies(m)
    graph, nc, _, body = bwd[0]
    live = nc - len(scan_run.fixed_carries(body, nc))
    feeds_carry = _ancestors(graph.outputs[:live])
    returned_only = [n for n in graph.nodes if n.op == "matmul" and n not in feeds_carry]
    assert not returned_only, f"backward body computes a returned product: {returned_only}"


@pytest.mark.parametrize("name, products", [("fastlstm", 1), ("lstm", 1), ("gru", 2)])
def test_forward_body_fuses_the_gate_products(name, products):
    """h @ U_i, h @ U_f, ... in the step template are one GEMM h @ [U_i U_f ...] as in the
    unrolled program (the template's weights count as loop-level values; their concat runs
    once per loop call), GRU's candidate product (r * h) @ U_c apart."""
    m = trained(CELLS[name], False)[0]
    fwd, _ = loop_bodies(m)
    graph = fwd[0][0]
    matmuls = [n for n in graph.nodes if n.op == "matmul"]
    assert len(matmuls) == products, matmuls


@pytest.mark.parametrize("name, gates", [("fastlstm", 4), ("lstm", 4), ("gru", 3)])
def test_backward_program_stacks_the_gate_gradients_once(name, gates):
    """After the reverse loop the weight-gradient GEMMs (dW = X^T [dz_i dz_f ...], dU = H^T
    [...]) and dx = [dz_i dz_f ...] W^T read one (T*B, gates*H) stack of the gate gradients;
    before, dW's stack was a second concat of the same dz pieces in the reverse order (GRU's
    dU one of [dz_z dz_r], not the slice of [dz_r dz_z dz_n] it is now)."""
    m = trained(CELLS[name], False)[0]
    graph = runtime_of(m).last.training_pair.backward.graph
    stacks = [n for n in graph.nodes if n.op == "concat" and n.shape[0] == T * B]
    assert [s.shape for s in stacks] in ([], [(T * B, gates * H)]), [
        [p.inputs[0].attrs.get("index") for p in s.inputs] for s in stacks
    ]
