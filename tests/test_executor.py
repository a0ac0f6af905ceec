"""Compiled programs: source, calling convention, input checks, errors located at a node."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import tracing
from tapernn.interpret import interpret


def test_source_is_straight_line_with_buffers_and_fresh_outputs():
    c = tn.compile(tn.trace(lambda x: tn.exp(tn.tanh(x)) + 1.0, np.ones(3)), passes=[])
    assert c.source.startswith("def program(a0, *,")
    lines = [line for line in c.source.splitlines()[1:-1] if "del " not in line]
    # the returned value is the end of an in-place chain: the chain runs in one array allocated
    # per call (the caller's), no preallocated buffer at all
    assert lines[0] == "    v1 = np_tanh(a0)"
    assert "np_exp(v1, out=v1)" in lines[1]  # tanh's value dies here: exp may overwrite it
    assert "out=v2" in lines[2]
    assert c.report.kernels == 3 and c.report.planned_bytes == 3 * 8
    assert not c.program.plan.buffers
    c2 = tn.compile(tn.trace(lambda x: tn.sum(tn.exp(tn.tanh(x))), np.ones(3)), passes=[])
    assert "np_tanh(a0, out=b" in c2.source  # a temporary: a preallocated buffer
    first = c(np.ones(3))
    second = c(np.zeros(3))
    np.testing.assert_allclose(first, np.exp(np.tanh(1.0)) + 1.0)  # not overwritten
    np.testing.assert_allclose(second, 2.0)


def test_fresh_values_are_deleted_after_last_use():
    f = lambda x: tn.sum(tn.where(x > 0, x, 0.0) * 2.0)  # where has no out=: a per-call value
    c = tn.compile(tn.trace(f, np.ones(3)), passes=[])
    assert "del v" in c.source


def test_single_and_multiple_outputs():
    x = np.arange(3.0)
    assert isinstance(tn.compile(tn.trace(tn.exp, x))(x), np.ndarray)
    outs = tn.compile(tn.trace(lambda v: (tn.exp(v), v), x))(x)
    assert isinstance(outs, list) and len(outs) == 2
    outs[1][0] = 99.0
    assert x[0] == 0.0  # an output that is an input is a copy


def test_input_checks():
    c = tn.compile(tn.trace(tn.exp, np.ones((2, 3))))
    with pytest.raises(tn.ShapeError, match=r"expected shape \(2, 3\), got \(3, 2\)"):
        c(np.ones((3, 2)))
    with pytest.raises(tn.DTypeError, match="expected dtype float64, got float32"):
        c(np.ones((2, 3), np.float32))
    with pytest.raises(tn.TapernnError, match="takes 1 arrays"):
        c(np.ones((2, 3)), np.ones(1))


def test_runtime_range_error_names_scope_and_step():
    def fn(w, ids):
        with tracing.scope("model.0"), tracing.step(2):
            return tn.embedding(w, ids)

    c = tn.compile(tn.trace(fn, np.ones((5, 2)), np.array([0, 1])))
    with pytest.raises(tn.ValueRangeError) as e:
        c(np.ones((5, 2)), np.array([0, 7]))
    msg = str(e.value)
    assert "embedding" in msg and "model.0" in msg and "step 2" in msg and "0 <= id < 5" in msg
    with pytest.raises(tn.ValueRangeError, match="-1 out of range"):
        c(np.ones((5, 2)), np.array([-1, 0]))


def test_integer_inputs_are_cast_between_int_kinds():
    c = tn.compile(tn.trace(tn.embedding, np.ones((3, 2)), np.array([0, 2])))
    np.testing.assert_array_equal(c(np.eye(3, 2), np.array([2, 0], np.int32)), [[0, 0], [1, 0]])


def test_report_counts_bytes():
    c = tn.compile(tn.trace(lambda x: tn.tanh(tn.exp(x)), np.ones(1000)), passes=[])
    # the returned tanh overwrites exp's value in the caller's array: one array in all
    assert c.report.naive_bytes == 16000 and c.report.peak_bytes == 8000
    assert "kernels per call" in str(c.report)


def test_gc_paused_restores_the_collector_also_on_errors():
    import gc

    from tapernn.executor import gc_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller's choice to keep it off is kept
    finally:
        gc.enable()


# a fused program used 4 times on 8 elements becomes a shared function (production: 16, 4096)
# of the NumPy backend's lowering (the numba backend calls its compiled kernels instead)
KERNELS = tn.PlanOptions(kernel_min_uses=4, kernel_min_size=8, backend="numpy")


def _repeated_chain(T, width=None):
    """T steps of the same elementwise chain: after fusion, one program used T times (on rows
    just large enough for a shared function under KERNELS by default)."""
    width = KERNELS.kernel_min_size if width is None else width

    def fn(x, y):
        outs = []
        for t in range(T):
            with tracing.scope("cell"), tracing.step(t):
                outs.append(tn.log(x[t] * y[t] + 1.0) * 2.0 - y[t])
        return outs

    return tn.trace(fn, np.ones((T, width)), np.ones((T, width)))


def test_a_program_used_by_many_steps_is_compiled_once_as_a_function():
    T = KERNELS.kernel_min_uses + 4
    g = _repeated_chain(T)
    c = tn.compile(g, options=KERNELS)
    assert c.source.startswith("def program(")
    assert c.source.count("def fused_kernel") == 1 and c.source.count(" = fused_kernel0(") == T
    assert "fused_kernel" not in tn.compile(g, backend="numpy").source  # production: inline
    rng = np.random.default_rng(0)
    x, y = rng.random((T, KERNELS.kernel_min_size)), rng.random((T, KERNELS.kernel_min_size))
    for a, b in zip(c(x, y), interpret(g, x, y)):
        np.testing.assert_allclose(a, b, rtol=1e-15)
    for few_or_small in (_repeated_chain(KERNELS.kernel_min_uses - 1), _repeated_chain(T, width=3)):
        src = tn.compile(few_or_small, options=KERNELS).source  # inline below either threshold
        assert "fused_kernel" not in src and "np_log" in src


def test_an_error_inside_a_shared_fused_function_names_the_step():
    T = KERNELS.kernel_min_uses + 10
    c = tn.compile(_repeated_chain(T), options=KERNELS)
    x, y = np.ones((T, KERNELS.kernel_min_size)), np.ones((T, KERNELS.kernel_min_size))
    x[13, 1], y[13, 1] = -1.0, 1.0  # log(0) at step 13 only
    with np.errstate(divide="raise"), pytest.raises(tn.TapernnError) as e:
        c(x, y)
    assert "fused" in str(e.value) and "cell" in str(e.value) and "step 13" in str(e.value)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_fused_sigmoid_runs_in_its_temporary_and_writes_its_output_once(dtype):
    """The last instruction of a fused group, an inline sigmoid, runs all its calls but the last
    in the temporary its operand dies in: its output (in the planner's hands a strided region of
    a larger storage, where a ufunc pays per row) is written by one call, not four."""
    rng = np.random.default_rng(0)
    a, b, w = (rng.standard_normal(s).astype(dtype) for s in ((4, 8), (4, 8), (8, 3)))
    compiled = tn.compile(
        tn.trace(lambda a, b, w: tn.sigmoid(a * b + 1.0) @ w, a, b, w), backend="numpy"
    )  # (the NumPy lowering's lines)
    lines = compiled.source.splitlines()
    [fused] = [n for n in compiled.graph.nodes if n.op == "fused"]
    out = (
        next(
            line
            for line in lines
            if line.strip().startswith("v") and "out=" in line and "matmul" not in line
        )
        .split("out=")[1]
        .rstrip(")")
    )
    assert sum(f"out={out})" in line for line in lines) == 1, compiled.source
    assert sum("out=" in line for line in lines) == 2 + 4  # a*b, +1, the sigmoid's four calls
    z = a.astype(np.float64) * b + 1.0
    np.testing.assert_allclose(
        compiled(a, b, w),
        (1.0 / (1.0 + np.exp(-z))) @ w,
        rtol=1e-12 if dtype == "float64" else 1e-5,
        atol=1e-6,
    )
    assert fused.attrs["program"][-1][0] == "sigmoid"


@pytest.mark.parametrize("size", [7, 129, 4096])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sigmoid_lowerings_keep_their_precision(size, dtype):
    """Sigmoids are lowered inline through logaddexp on small values, as 1 / (1 + exp(min(-a,
    L))) on larger ones, both dtypes (exact in both tails; tests/test_sigmoid_precision.py
    checks them against a 40-digit reference); those read by a log through logaddexp on small
    values, the exact op on larger ones."""
    from tapernn.fused_lowering import EXACT_SIGMOID_INLINE_SIZE

    x = np.linspace(-60.0, 60.0, size).astype(dtype)
    compiled = tn.compile(tn.trace(lambda v: tn.sigmoid(v) * 1.0, x), backend="numpy")
    y = compiled(x)
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    rtol = 1e-13 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(y, exact, rtol=rtol, atol=0)
    small = size <= EXACT_SIGMOID_INLINE_SIZE
    assert ("np_minimum" in compiled.source) != small and "np_tanh" not in compiled.source
    assert ("np_logaddexp" in compiled.source) == small
    logs = tn.compile(tn.trace(lambda v: tn.log(tn.sigmoid(v)), x), backend="numpy")
    assert ("np_logaddexp" in logs.source) == (size <= EXACT_SIGMOID_INLINE_SIZE)
    np.testing.assert_allclose(logs(x), np.log(exact), rtol=rtol, atol=rtol)
