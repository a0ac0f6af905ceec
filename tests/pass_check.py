"""Helpers of the pass tests: run a graph under a pass list, and check a pass keeps its values
against the reference interpreter (tapernn.interpret: op forwards only, nothing the passes, the
planner or the code generator share)."""

import numpy as np
from plan_check import ANY_SIZE, check_plan

import tapernn as tn
from tapernn import passes as P
from tapernn.interpret import interpret


def run(graph, passes, arrays):
    return tn.compile(graph, passes=passes, options=ANY_SIZE)(*arrays)


def assert_same(graph, passes, arrays, rtol=1e-12, atol=1e-12):
    """`graph` rewritten by `passes` computes what the reference interpreter computes for the
    original graph, both interpreted and compiled (plan checked independently); returns the
    rewritten graph."""
    expected = interpret(graph, *arrays)
    out, _ = P.run_passes(graph, passes)
    compiled = tn.compile(out, passes=[], options=ANY_SIZE)
    check_plan(compiled.graph, compiled.program.plan)
    got = compiled(*arrays)
    got = got if isinstance(got, list) else [got]
    for label, values in (("interpreted", interpret(out, *arrays)), ("compiled", got)):
        assert len(values) == len(expected)
        for a, b in zip(values, expected):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=label)
    return out


def randn(rng, *shape):
    return rng.standard_normal(shape)
