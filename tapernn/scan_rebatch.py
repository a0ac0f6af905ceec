"""The batch split's body graphs (scan_split.py): a loop body cut to a number of its batch rows,
checked row-wise op by op. Split from scan_split, which re-exports `rebatch`."""

from __future__ import annotations

from .graph import Graph, Node
from .ops.registry import get_op

_FULL = ("s", None, None, None)
_REDUCTIONS = ("sum", "max", "logsumexp")


def rebatch(body: Graph, n_carry: int, n_xs: int, rows: int) -> Graph | str:
    """`body` with its batch (axis 0 of every carry, xs and output, B rows) cut to `rows`, or
    why it cannot be: a body value's row r must depend on row r of the batched inputs alone,
    checked op by op (elementwise with invariants broadcast over rows; `a @ W` with W
    invariant; reductions not over axis 0, as MaskZero's row test, and reshapes keeping it;
    slices, concats and index_grad that keep axis 0 whole); each new node's shape is checked against its op's own
    shape rule."""
    heads = body.inputs[: n_carry + n_xs]
    if not heads or any(not n.shape for n in heads):
        return "a carry or xs without a batch axis"
    batch = heads[0].shape[0]
    if any(n.shape[0] != batch for n in heads):
        return "carries and xs of different row counts"
    if not 1 <= rows < batch:
        return f"{rows} rows of {batch}"
    head_set = set(heads)
    new: dict[Node, Node] = {}
    batched: set[Node] = set()
    nodes = []
    for n in body.nodes:
        if n.op == "input" and n in head_set:
            m = n.replace(shape=(rows, *n.shape[1:]))
            batched.add(m)
        elif n.op == "zeros" and n.shape and n.shape[0] == batch and not n.inputs:
            m = n.replace(
                attrs={**n.attrs, "shape": (rows, *n.shape[1:])}, shape=(rows, *n.shape[1:])
            )
            batched.add(m)
        else:
            ins = tuple(new.get(i, i) for i in n.inputs)
            if not any(i in batched for i in ins):
                m = n if ins == n.inputs else n.with_inputs(ins)
            else:
                attrs = _row_wise(n, ins, batched, batch, rows)
                if isinstance(attrs, str):
                    return attrs
                m = n.replace(inputs=ins, attrs=attrs, shape=(rows, *n.shape[1:]))
                try:
                    shape = tuple(get_op(n.op).shape(*[i.shape for i in ins], **attrs))
                except Exception as e:  # noqa: BLE001 -- any failure: not row-wise
                    return f"{n.op}: {e}"
                if shape != m.shape:
                    return f"{n.op}: shape {shape} for {rows} rows"
                batched.add(m)
        new[n] = m
        nodes.append(m)
    outputs = [new.get(o, o) for o in body.outputs]
    if any(o not in batched for o in outputs):
        return "an output without the batch axis"
    return Graph(nodes, [new.get(i, i) for i in body.inputs], outputs, body.meta)


def _row_wise(n: Node, ins: tuple, batched: set, batch: int, rows: int) -> dict | str:
    """`n`'s attrs for `rows` rows when it is row-wise over its batched inputs, else why not."""
    op = get_op(n.op)
    if n.shape[:1] != (batch,):
        return f"{n.op} without the batch axis first"
    if op.elementwise:
        for i in ins:
            if i in batched and i.ndim != n.ndim:
                return f"{n.op} broadcasting a batched value"
            if i not in batched and i.ndim == n.ndim and i.shape[0] != 1:
                return f"{n.op} with a {i.shape} value that is not broadcast over the rows"
        return n.attrs
    if n.op in ("matmul", "packed_matmul"):
        if ins[0] in batched and ins[0].ndim == 2 and not any(i in batched for i in ins[1:]):
            return n.attrs
        return f"{n.op} over the batch"
    if n.op == "getitem" and ins[0] in batched:
        index = n.attrs["index"]
        if index and (index[0] == _FULL or _ellipsis_first(index, ins[0].ndim)):
            return n.attrs
        return "getitem across rows"
    if n.op == "concat" and all(i in batched for i in ins):
        if n.attrs.get("axis", 0) % n.ndim != 0:
            return n.attrs
        return "concat along the batch"
    if n.op == "reshape" and ins[0] in batched and n.inputs[0].shape[:1] == (batch,):
        return {**n.attrs, "shape": (rows, *n.shape[1:])}  # (row r of x is row r: C order)
    if n.op in _REDUCTIONS and ins[0] in batched:
        if all(a % ins[0].ndim for a in n.attrs["axis"]):  # over a row's own entries alone
            return n.attrs
        return f"{n.op} over the batch"
    if n.op == "index_grad" and ins[0] in batched:
        index, shape = n.attrs["index"], n.attrs["shape"]
        if (
            index
            and (index[0] == _FULL or _ellipsis_first(index, n.ndim))
            and shape[:1] == (batch,)
        ):
            return {**n.attrs, "shape": (rows, *shape[1:])}
        return "index_grad across rows"
    return f"{n.op} not known to be row-wise"


def _ellipsis_first(index: tuple, ndim: int) -> bool:
    """`x[..., k]` (the API's own `a[..., :H]`): the Ellipsis covers axis 0 when the items after
    it (None adds an axis and takes none) take fewer than all of x's axes."""
    taken = sum(1 for k in index[1:] if k is not None)
    return index[0] is Ellipsis and taken < ndim
