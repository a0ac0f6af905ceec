"""The graph's dtype is what runs, for integer and bool data too (hdtype): for every registered op
(the registry enumerated, not a hand-picked list) and every integer / bool input dtype, either the
trace refuses the op with a DTypeError, or the dtype the node records equals the dtype of the
array the compiled program returns -- on the numpy and the numba backend and in the reference
interpreter. Before: tanh of int8 recorded int8 and ran float16; sigmoid / sqrt / softmax of
int64 recorded int64 and failed at run time (NumPy's cast message); sum of int8 recorded int8
and returned int64 (np.add.reduce upcasts); int / int recorded an integer and ran float64; relu
of bool recorded bool and ran int64; sub / neg of bool recorded bool and failed at run time."""

import numpy as np
import pytest

import tapernn as tn
from tapernn.backends import numba_available
from tapernn.interpret import interpret
from tapernn.ops import REGISTRY
from tapernn.tracing import emit

DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint64]
IDS = np.array([[0, 3, 3], [1, 0, 2]])


def data(shape, dtype):
    """Small positive values (bool: a mix), so that no op's value overflows or leaves its domain."""
    values = np.arange(np.prod(shape, dtype=np.int64)).reshape(shape) % 3
    return (values > 0) if dtype == np.bool_ else (values + 1).astype(dtype)


def _loop(h, x):
    """A loop of carry h over the rows of x: integer rows meet the float carry (a float loop)."""
    body = tn.trace(
        lambda h, x: [h + x, h * x + tn.sum(x, 1, keepdims=True)],
        np.zeros(h.shape, h.dtype),
        np.zeros(x.shape[1:], x.dtype),
    )
    r = tn.scan(body, [h], [x])
    return r.carries + r.ys


def unary(op, **attrs):
    return lambda d: (lambda x: emit(op, x, **attrs), [data((3, 4), d)])


def binary(op, **attrs):
    """The op of two operands of the dtype, and of one and a float32 operand (NumPy: int16 and
    float32 are float32, int32 and float32 float64)."""
    fn = lambda a, b: emit(op, a, b, **attrs)
    return [
        lambda d: (fn, [data((3, 4), d), data((4,), d)]),
        lambda d: (fn, [data((3, 4), d), data((4,), np.float32)]),
    ]


# op -> cases: each case makes (fn, arrays) of a data dtype; ops with ids take integer ids
# whatever the data dtype, and a case with the ids in the data dtype
CASES = {
    **{op: binary(op) for op in ("add", "sub", "mul", "div", "power", "maximum", "minimum")},
    **{op: binary(op) for op in ("greater", "equal")},
    **{op: [unary(op)] for op in ("neg", "exp", "log", "tanh", "sigmoid", "relu", "sqrt")},
    **{op: [unary(op)] for op in ("abs", "sign", "stop_gradient", "transpose_copy")},
    **{op: [unary(op, axis=1)] for op in ("softmax", "log_softmax")},
    **{
        op: [unary(op, axis=(1,), keepdims=False), unary(op, axis=(0, 1), keepdims=True)]
        for op in ("sum", "max", "logsumexp")
    },
    "sum_mul": [
        lambda d: (
            lambda a, b: emit("sum_mul", a, b, axis=(0,), keepdims=False),
            [data((3, 4), d), data((3, 4), d)],
        )
    ],
    "where": [
        lambda d: (lambda a, b: emit("where", emit("greater", a, b), a, b), [data((3, 4), d)] * 2)
    ],
    "cast": [unary("cast", dtype="<f8"), unary("cast", dtype="<i4")],
    "zeros": [
        lambda d: (
            lambda x: x + emit("zeros", shape=(3, 4), dtype=np.dtype(d).str),
            [data((3, 4), d)],
        )
    ],
    "ones": [
        lambda d: (
            lambda x: x + emit("ones", shape=(3, 4), dtype=np.dtype(d).str),
            [data((3, 4), d)],
        )
    ],
    "add_n": [lambda d: (lambda x: emit("add_n", x, x, x), [data((3, 4), d)])],
    "broadcast_to": [unary("broadcast_to", shape=(2, 3, 4))],
    "matmul": [lambda d: (lambda a, b: emit("matmul", a, b), [data((3, 4), d), data((4, 2), d)])],
    "reshape": [unary("reshape", shape=(12,))],
    "transpose": [unary("transpose", axes=(1, 0))],
    "concat": [lambda d: (lambda a, b: emit("concat", a, b, axis=0), [data((3, 4), d)] * 2)],
    "getitem": [
        unary("getitem", index=(("s", 1, 3, None),)),
        unary("getitem", index=(("a", (0, 2, 0)),)),
    ],
    "index_grad": [
        unary("index_grad", shape=(5, 4), index=(("s", 1, 4, None),)),
        unary("index_grad", shape=(5, 4), index=(("a", (0, 2, 0)),)),
    ],
    "embedding": [
        lambda d: (lambda w, i: emit("embedding", w, i), [data((4, 5), d), IDS]),
        lambda d: (lambda w, i: emit("embedding", w, i), [data((4, 5), np.float64), IDS.astype(d)]),
    ],
    "embedding_grad": [
        lambda d: (lambda g, i: emit("embedding_grad", g, i, n=4), [data((2, 3, 5), d), IDS]),
    ],
    "gather": [
        lambda d: (lambda x, i: emit("gather", x, i, axis=1), [data((2, 4), d), IDS]),
        lambda d: (
            lambda x, i: emit("gather", x, i, axis=1),
            [data((2, 4), np.float64), IDS.astype(d)],
        ),
    ],
    "scatter_add": [
        lambda d: (lambda g, i: emit("scatter_add", g, i, axis=1, n=4), [data((2, 3), d), IDS]),
    ],
    "add_loss": [lambda d: (lambda x, s: emit("add_loss", x, s), [data((3, 4), d), data((), d)])],
    "scan": [
        lambda d: (_loop, [data((2, 3), np.float64), data((5, 2, 3), d)]),
        lambda d: (_loop, [data((2, 3), d), data((5, 2, 3), d)]),  # an integer loop: refused
    ],
    # made by the fusion pass from elementwise chains: the chain compiled with the passes on
    "fused": [
        lambda d: (lambda a, b: tn.maximum(a * b + a, b) * a, [data((3, 4), d), data((3, 4), d)]),
        lambda d: (
            lambda a, b: tn.tanh(a * b + b) * a,
            [data((3, 4), d), data((3, 4), np.float32)],
        ),
    ],
}


def _loop_matmul(h, x, w):  # (h float64: the float loop an integer product may be part of)
    body = tn.trace(
        lambda h, x, w: [x + h @ w],
        np.zeros(h.shape, h.dtype),
        np.zeros(x.shape[1:], x.dtype),
        np.zeros(w.shape, w.dtype),
    )
    return tn.scan(body, [h], [x], [w]).carries


# numba's packed step GEMMs (scan_pack.py, made for float loops only): a loop's matmul
for _op in ("pack_panels", "packed_matmul"):
    CASES[_op] = [
        lambda d: (
            _loop_matmul,
            [data((8, 16), np.float64), data((3, 8, 16), d), data((16, 16), d)],
        )
    ]


def outcome(case, dtype):
    """("refused", message) or ("ran", (recorded dtypes, {runner: returned dtypes})): the
    program compiled on each backend (default passes: fusion, loops) and the interpreter."""
    fn, arrays = case(dtype)
    try:
        graph = tn.trace(fn, *arrays)
    except tn.DTypeError as e:
        return "refused", str(e)
    got = {"interpret": [v.dtype for v in interpret(graph, *arrays)]}
    for backend in BACKENDS:
        out = tn.compile(graph, backend=backend)(*arrays)
        got[backend] = [np.asarray(v).dtype for v in (out if isinstance(out, list) else [out])]
    return "ran", ([n.dtype for n in graph.outputs], got)


BACKENDS = ["numpy"] + (["numba"] if numba_available() else [])


def test_every_registered_op_has_cases():
    assert set(CASES) == set(REGISTRY)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # (log of 0 and the like: values aside)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "op,k", [(op, k) for op, cases in CASES.items() for k in range(len(cases))]
)
def test_recorded_dtype_is_what_runs_or_the_op_refuses(op, k, dtype):
    kind, what = outcome(CASES[op][k], dtype)
    if kind == "refused":  # names the op (or its ids) and what to do
        assert what.startswith(f"{op}: ") and ("astype(np.float64)" in what or "ids" in what)
        return
    recorded, got = what
    for runner, dtypes in got.items():
        assert dtypes == recorded, f"{runner} returned {dtypes}, the graph records {recorded}"
