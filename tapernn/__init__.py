"""tapernn: Element-Research's Torch7 `rnn` library on a graph-compiling reverse-mode autodiff."""
from __future__ import annotations

from . import errors, graph, tracing, functional  # noqa: I001  (order: ops register after tracing)
from .ops import load_families

load_families()

from .errors import (DTypeError, GradcheckError, GraphError, NumericError, ShapeError, StateError,
                     TapernnError, ValueRangeError)
from .functional import (abs, add_n, broadcast_to, cast, concat, embedding, exp, gather, log,
                         log_softmax, logsumexp, matmul, max, maximum, mean, minimum, ones,
                         ones_like, relu, reshape, sigmoid, softmax, split, sqrt, stack,
                         stop_gradient, sum, tanh, transpose, unbroadcast, where, zeros, zeros_like)
from .graph import Graph, Node
from .tracing import Var, trace
from .autodiff import grad
from .executor import Compiled, compile
from .regions import PlanOptions
from .testing import gradcheck

__version__ = "0.1.0"
from .random import manual_seed
from .passes import set_default_passes
from .serialization import load_into, save
from .export import render, render_passes, to_dot, to_json
from . import nn, optim, passes  # noqa: E402
