"""Graph IR: printing, verify, networkx view, rebuilding, shape errors at trace time."""

import networkx as nx
import numpy as np
import pytest

import tapernn as tn
from tapernn import tracing
from tapernn.graph import Graph, Node


def small():
    def fn(x, w):
        with tracing.step(1), tracing.scope("seq.lstm"):
            return tn.tanh(x @ w) * 2.0

    return tn.trace(fn, np.ones((2, 3)), np.ones((3, 4), np.float32), names=["x", "w"])


def test_str_has_one_line_per_node_with_tags():
    text = str(small())
    lines = text.splitlines()
    assert lines[0] == "graph(%0:x, %1:w) {"
    assert "  %2 = matmul %0 %1  (2, 4) float64  step=1 scope=seq.lstm" in lines
    assert "  %3 = tanh %2  (2, 4) float64  step=1 scope=seq.lstm" in lines
    assert lines[-2] == "  return %5"
    assert len(lines) == 2 + 6 + 1


def test_verify_accepts_traced_and_rejects_broken_graphs():
    g = small()
    g.verify()
    broken = Graph(g.nodes[::-1], g.inputs, g.outputs)
    with pytest.raises(tn.GraphError, match="not earlier on the tape"):
        broken.verify()
    tanh = next(n for n in g.nodes if n.op == "tanh")
    bad = g.rebuild(
        lambda n, m: n.replace(shape=(9, 9), inputs=(m[n.inputs[0]],)) if n is tanh else None
    )
    with pytest.raises(tn.GraphError, match=r"recorded shape \(9, 9\)"):
        bad.verify()
    dangling = Graph([n for n in g.nodes if n.op != "matmul"], g.inputs, g.outputs)
    with pytest.raises(tn.GraphError):
        dangling.verify()


def test_to_networkx_is_a_dag_with_attributes():
    g = tn.trace(lambda x: x * x + 1.0, np.ones(3))
    nxg = g.to_networkx()
    assert isinstance(nxg, nx.MultiDiGraph) and nx.is_directed_acyclic_graph(nxg)
    mul = next(k for k, d in nxg.nodes(data=True) if d["op"] == "mul")
    assert nxg.in_degree(mul) == 2  # x used twice: two parallel edges
    assert nxg.nodes[mul]["shape"] == [3] and nxg.nodes[mul]["dtype"] == "float64"


def test_shape_error_names_op_shapes_and_scope():
    def fn(x, y):
        with tracing.scope("model.0"), tracing.step(4):
            return x + y

    with pytest.raises(tn.ShapeError) as e:
        tn.trace(fn, np.ones((2, 3)), np.ones((4,)))
    msg = str(e.value)
    assert (
        "add" in msg and "(2, 3)" in msg and "(4,)" in msg and "model.0" in msg and "step 4" in msg
    )


@pytest.mark.parametrize(
    "fn,arrays,fragment",
    [
        (lambda a, b: a @ b, (np.ones((2, 3)), np.ones((2, 3))), "inner dimensions"),
        (lambda a: tn.reshape(a, (4, 2)), (np.ones((2, 3)),), "cannot reshape"),
        (lambda a: a[5], (np.ones((2, 3)),), "does not fit shape"),
        (
            lambda a, b: tn.concat([a, b], axis=1),
            (np.ones((2, 3)), np.ones((3, 3))),
            "differ off that axis",
        ),
        (lambda a: tn.sum(a, axis=2), (np.ones((2, 3)),), "out of range"),
    ],
)
def test_shape_errors_are_tapernn_errors(fn, arrays, fragment):
    with pytest.raises(tn.ShapeError, match=fragment):
        tn.trace(fn, *arrays)


def test_vars_from_two_graphs_do_not_mix():
    keep = {}
    tn.trace(lambda x: keep.setdefault("x", x) * 1, np.ones(2))
    with pytest.raises(tn.TapernnError, match="different graphs"):
        tn.trace(lambda y: y + keep["x"], np.ones(2))


def test_rebuild_and_dead_code():
    g = tn.trace(lambda x: [tn.exp(x), tn.tanh(x)], np.ones(2))
    g.outputs = g.outputs[:1]
    live = g.eliminate_dead_code()
    assert "tanh" not in live.op_counts() and "exp" in live.op_counts()
    live.verify()
    exp = next(n for n in live.nodes if n.op == "exp")
    swapped = live.rebuild(lambda n, m: n.replace(op="tanh") if n is exp else None)
    swapped.verify()
    assert tn.compile(swapped, passes=[])(np.zeros(2))[0].tolist() == [0.0, 0.0]


def test_node_nbytes_and_ids_are_unique():
    a = Node("input", (), {"kind": "data"}, (2, 3), np.float32, name="a")
    b = a.replace(name="b")
    assert a.nbytes == 24 and a.id != b.id and b.name == "b"


def test_replace_copies_fields_and_normalises_only_what_changes():
    x = Node("input", (), {"kind": "data"}, (2, 3), np.float64, name="x")
    t = Node("tanh", (x,), {}, (2, 3), np.float64, step=2, scope="m", phase="backward")
    t.verified = True
    same_shape = Node("input", (), {"kind": "data"}, (2, 3), np.float64, name="y")
    moved = t.replace(inputs=[same_shape])
    assert moved.inputs == (same_shape,) and moved.id != t.id and moved.verified
    assert (moved.op, moved.shape, moved.dtype, moved.step, moved.scope, moved.phase) == (
        "tanh",
        (2, 3),
        np.dtype(np.float64),
        2,
        "m",
        "backward",
    )
    other = Node("input", (), {"kind": "data"}, (3, 2), np.float64, name="z")
    assert not t.replace(inputs=(other,)).verified  # rules must run again: shapes differ
    assert not t.replace(op="exp").verified
    r = t.replace(shape=[np.int64(3), 2], dtype="float32", attrs=None)
    assert r.shape == (3, 2) and type(r.shape[0]) is int and r.dtype == np.float32 and r.attrs == {}
    with pytest.raises(TypeError, match="unexpected field"):
        t.replace(colour="red")


def test_attrs_key_is_cached_and_follows_attrs():
    a = Node("input", (), {"kind": "data"}, (2, 3), np.float64, name="a")
    s = Node("sum", (a,), {"axis": (0,), "keepdims": False}, (3,), np.float64)
    assert s.attrs_key == (("axis", (0,)), ("keepdims", False))
    assert s.replace(inputs=(a,)).attrs_key is s.attrs_key
    assert s.replace(attrs={"axis": (1,), "keepdims": True}).attrs_key == (
        ("axis", (1,)),
        ("keepdims", True),
    )


def test_rebuild_and_dead_code_return_the_graph_itself_when_nothing_changes():
    g = tn.trace(lambda x: [tn.exp(x), tn.tanh(x)], np.ones(2))
    assert g.rebuild(lambda n, m: None) is g
    assert g.eliminate_dead_code() is g
    exp = next(n for n in g.nodes if n.op == "exp")
    changed = g.rebuild(lambda n, m: n.replace(op="tanh") if n is exp else None)
    assert changed is not g and changed.op_counts()["tanh"] == 2 and g.op_counts()["exp"] == 1
    g.outputs = g.outputs[:1]
    assert g.eliminate_dead_code() is not g


def test_meta_is_a_typed_immutable_record():
    import dataclasses

    from tapernn.autodiff import split_forward_backward
    from tapernn.graph import GraphMeta

    g = tn.grad(tn.trace(lambda x: tn.sum(tn.tanh(x)), np.ones(3)))
    assert isinstance(g.meta, GraphMeta) and g.meta.wrt == ("x0",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.meta.single_output = True
    fwd, bwd = split_forward_backward(g, 1)
    assert fwd.meta.saved_outputs == tuple(range(1, len(fwd.outputs)))
    assert fwd.meta.saved_names == bwd.meta.saved_names
    assert [n.name for n in bwd.inputs] == list(
        bwd.meta.saved_names + bwd.meta.seed_names + bwd.meta.input_names
    )
