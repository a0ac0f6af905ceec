"""tapernn: Element-Research's Torch7 `rnn` library on a graph-compiling reverse-mode autodiff."""

from __future__ import annotations

from . import interrupt

interrupt.quiet_while_starting()  # (the command: a Ctrl-C while importing is one line, exit 130)

from . import errors, functional, graph, tracing
from .autodiff import grad
from .backends import get_backend, set_backend
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    BuildError,
    DTypeError,
    GradcheckError,
    GraphError,
    NotPicklableError,
    NumericError,
    ShapeError,
    StateError,
    TapernnError,
    TracingError,
    ValueRangeError,
)
from .executor import Compiled, compile
from .functional import (
    abs,
    add_n,
    broadcast_to,
    cast,
    concat,
    embedding,
    exp,
    gather,
    log,
    log_softmax,
    logsumexp,
    matmul,
    max,
    maximum,
    min,
    minimum,
    ones,
    ones_like,
    relu,
    reshape,
    sigmoid,
    softmax,
    sqrt,
    stop_gradient,
    sum,
    tanh,
    transpose,
    unbroadcast,
    where,
    zeros,
    zeros_like,
)
from .graph import Graph, Node
from .library import mean, split, stack
from .memory import PlanOptions
from .ops import elementwise, fused, linalg, reduce, shape  # noqa: F401  (register the op set)
from .ops import nn as _nn_ops  # noqa: F401
from .regions import RegionWalk  # noqa: F401  (hands the region planner to memory)
from .scan import ScanResult, inline, scan, unroll_scans
from .testing import gradcheck
from .tracing import Var, trace

__version__ = "0.1.0"
from . import nn, optim, passes
from .blas import set_blas_threads
from .passes import set_default_passes
from .random import manual_seed
from .serialization import load_into, save

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "BuildError",
    "Compiled",
    "DTypeError",
    "GradcheckError",
    "Graph",
    "GraphError",
    "Node",
    "NotPicklableError",
    "NumericError",
    "PlanOptions",
    "ScanResult",
    "ShapeError",
    "StateError",
    "TapernnError",
    "TracingError",
    "ValueRangeError",
    "Var",
    "__version__",
    "abs",
    "add_n",
    "broadcast_to",
    "cast",
    "compile",
    "concat",
    "embedding",
    "errors",
    "exp",
    "functional",
    "gather",
    "get_backend",
    "grad",
    "gradcheck",
    "graph",
    "inline",
    "load_into",
    "log",
    "log_softmax",
    "logsumexp",
    "manual_seed",
    "matmul",
    "max",
    "maximum",
    "mean",
    "min",
    "minimum",
    "nn",
    "ones",
    "ones_like",
    "optim",
    "passes",
    "relu",
    "reshape",
    "save",
    "scan",
    "set_backend",
    "set_blas_threads",
    "set_default_passes",
    "sigmoid",
    "softmax",
    "split",
    "sqrt",
    "stack",
    "stop_gradient",
    "sum",
    "tanh",
    "trace",
    "tracing",
    "transpose",
    "unbroadcast",
    "unroll_scans",
    "where",
    "zeros",
    "zeros_like",
]

_DIAGRAMS = ("render", "render_passes", "to_dot", "to_json")


def __getattr__(name: str):
    """The diagram functions load `tapernn.export` (and the graphviz package) on first use."""
    if name in _DIAGRAMS:
        try:
            from . import export
        except ModuleNotFoundError as e:
            if e.name != "graphviz":
                raise
            raise ModuleNotFoundError(
                f"tapernn.{name} needs the graphviz package (pip install graphviz)", name="graphviz"
            ) from e
        return getattr(export, name)
    raise AttributeError(f"module 'tapernn' has no attribute {name!r}")


try:  # Jupyter display of graphs, programs and modules (export attaches _repr_svg_)
    from . import export  # noqa: F401
except ModuleNotFoundError as e:  # without graphviz: no diagrams, everything else works
    if e.name != "graphviz":
        raise
