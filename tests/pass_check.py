"""Helpers of the pass tests: run a graph under a pass list, and check a pass keeps its values."""
import numpy as np

import tapernn as tn
from tapernn import passes as P


def run(graph, passes, arrays):
    return tn.compile(graph, passes=passes)(*arrays)


def assert_same(graph, passes, arrays):
    """Outputs of `graph` with `passes` equal those without any pass; returns the new graph."""
    expected = run(graph, [], arrays)
    got = run(graph, passes, arrays)
    expected = expected if isinstance(expected, list) else [expected]
    got = got if isinstance(got, list) else [got]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    out, _ = P.run_passes(graph, passes)
    return out


def randn(rng, *shape):
    return rng.standard_normal(shape)
