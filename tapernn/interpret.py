"""The reference interpreter: runs a graph node by node, one call of each op's own NumPy forward
per node -- no passes, no buffer plan, no fusion, no generated code. It is the oracle the pass
and lowering tests compare the compiler with (JAX's `eval_jaxpr`, torch.fx's `Interpreter`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import GraphError, TapernnError
from .graph import Graph
from .ops.registry import get_op


def interpret(graph: Graph, *arrays: Any) -> list[np.ndarray]:
    """The values of `graph.outputs` for one array per graph input, in `graph.outputs` order."""
    if len(arrays) != len(graph.inputs):
        raise TapernnError(
            f"interpret: the graph takes {len(graph.inputs)} arrays, got {len(arrays)}"
        )
    env = {n: np.asarray(a) for n, a in zip(graph.inputs, arrays)}
    for n in graph.nodes:
        if n.op == "input":
            continue
        if n.op == "constant":
            env[n] = n.value
            continue
        value = np.asarray(get_op(n.op).forward(*[env[i] for i in n.inputs], **n.attrs))
        if value.shape != n.shape or value.dtype != n.dtype:
            raise GraphError(
                f"interpret: {n.op} gave {value.shape} {value.dtype}, the node "
                f"records {n.shape} {n.dtype} (step {n.step}, scope {n.scope!r})"
            )
        env[n] = value
    return [np.array(env[o]) for o in graph.outputs]
