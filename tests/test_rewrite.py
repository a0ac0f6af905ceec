"""passes.rewrite: `substitute` (its order equals Kahn's algorithm keyed by position, and the
generic rebuild) and `read_once` (equals the users map)."""

import numpy as np
import pytest
from pass_check import randn

import tapernn as tn
from tapernn.passes.rewrite import substitute


def test_substitute_reorders_when_a_replacement_reads_later_nodes(rng):
    from tapernn.passes.rewrite import derive

    g = tn.trace(lambda x, y: (tn.tanh(x), tn.exp(y)), randn(rng, 3), randn(rng, 3))
    tanh, exp = g.outputs
    out = substitute(g, {tanh: derive(tanh, "add", (tanh.inputs[0], exp))})
    out.verify()
    vals = tn.compile(out, passes=[])(np.ones(3), np.zeros(3))
    np.testing.assert_allclose(vals[0], 2.0)
    with pytest.raises(tn.GraphError, match="depend on itself"):
        substitute(g, {tanh: derive(tanh, "add", (tanh, exp))})


def _kahn_reference(nodes, pos):
    """Textbook Kahn's algorithm with a heap keyed by (position, listing order)."""
    import heapq

    seq = {n: k for k, n in enumerate(nodes)}
    waiting = {n: len(set(n.inputs)) for n in nodes}
    users = {}
    for n in nodes:
        for i in set(n.inputs):
            users.setdefault(i, []).append(n)
    heap = [(pos.get(n, 0.0), seq[n], n) for n in nodes if waiting[n] == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        n = heapq.heappop(heap)[2]
        out.append(n)
        for u in users.get(n, ()):
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(heap, (pos.get(u, 0.0), seq[u], u))
    return out


def _random_adds(rng, lo, hi, tagged=False):
    """An input x and a random DAG of add_n nodes over it (lo..hi nodes), in tape order."""
    from tapernn.graph import Node

    x = Node("input", (), {"kind": "data"}, (2,), np.float64, name="x")
    nodes = [x]
    for k in range(int(rng.integers(lo, hi))):
        ins = tuple(nodes[int(j)] for j in rng.integers(0, len(nodes), int(rng.integers(1, 4))))
        nodes.append(Node("add_n", ins, {"k": k} if tagged else {}, (2,), np.float64))
    return x, nodes


@pytest.mark.parametrize("seed", range(40))
def test_topological_order_equals_kahns_on_random_positions(seed):
    # the sweep along the sorted positions must give exactly the heap algorithm's order, also
    # when many nodes come before their inputs (and for cycles: both leave those nodes out)
    from tapernn.graph import Node
    from tapernn.passes.rewrite import _topological

    rng = np.random.default_rng(seed)
    x, nodes = _random_adds(rng, 1, 60)
    if seed % 10 == 9:  # a cycle: a node reading itself through a later one
        a = Node("add_n", (x,), {}, (2,), np.float64)
        b = Node("add_n", (a,), {}, (2,), np.float64)
        a.inputs = (x, b)
        nodes += [a, b]
    order = list(rng.permutation(len(nodes)))
    listed = [nodes[k] for k in order]
    pos = {
        n: float(rng.integers(0, 8)) - 0.5 * float(rng.integers(0, 2))
        for n in listed
        if rng.random() < 0.9
    }
    if seed % 4 == 0:
        pos = {n: float(k) for k, n in enumerate(nodes)}  # already in order: the fast path
    assert _topological(listed, pos) == _kahn_reference(listed, pos)


def _reference_substitute(g, subst):
    """substitute() as first written: every node through the generic _finalize, then the
    textbook Kahn over all of them, then dead-code elimination."""
    from tapernn.graph import Graph
    from tapernn.passes import rewrite as rw

    pos = {n: k for k, n in enumerate(g.nodes)}
    for old, new in subst.items():
        rw._give_positions(new, pos, pos[old])
    final = {}
    for n in g.nodes:
        rw._finalize(n, subst, final, pos)
    order = list(dict.fromkeys(final[n] for n in g.nodes))
    present, stack = set(order), list(order)
    while stack:
        for i in stack.pop().inputs:
            if i not in present:
                present.add(i)
                order.append(i)
                stack.append(i)
    return Graph(
        _kahn_reference(order, pos), [final[n] for n in g.inputs], [final[n] for n in g.outputs]
    ).eliminate_dead_code()


@pytest.mark.parametrize("seed", range(60))
def test_substitute_equals_the_generic_algorithm(seed):
    # the head of the tape before the first replaced node is kept as it is, the rest re-sorted
    from tapernn.graph import Graph, Node

    rng = np.random.default_rng(seed)
    x, nodes = _random_adds(rng, 2, 40, tagged=True)
    outputs = [nodes[int(j)] for j in rng.integers(1, len(nodes), int(rng.integers(1, 4)))]
    g = Graph(nodes, [x], outputs)
    subst = {}
    for k in sorted({int(j) for j in rng.integers(1, len(nodes), int(rng.integers(1, 5)))}):
        old = nodes[k]
        if rng.random() < 0.3:  # an existing earlier value
            subst[old] = nodes[int(rng.integers(0, k))]
            continue
        helper = Node(
            "add_n", tuple(nodes[int(j)] for j in rng.integers(0, k, 2)), {"h": k}, (2,), np.float64
        )
        subst[old] = Node(
            "add_n", (helper, nodes[int(rng.integers(0, k))]), {"r": k}, (2,), np.float64
        )
    got, expected = substitute(g, subst), _reference_substitute(g, subst)
    assert str(got) == str(expected)
    got.verify()


def test_read_once_agrees_with_the_users_map(rng):
    from tapernn.passes.rewrite import read_once, sole_use

    g = tn.trace(
        lambda x, y: (tn.tanh(x) * tn.tanh(x) + y * y, tn.exp(x) + tn.exp(y), y * 2.0),
        randn(rng, 3),
        randn(rng, 3),
    )
    users, once = g.users(), read_once(g)
    checked = 0
    for n in g.nodes:
        for t in dict.fromkeys(n.inputs):
            assert once(t) == (n.inputs.count(t) == 1 and sole_use(users, t, n, g))
            checked += 1
    assert checked > 5 and any(once(t) for t in g.nodes) and not all(once(t) for t in g.nodes)
