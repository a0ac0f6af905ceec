"""The kernel runs without the optimisation tier (ARCHITECTURE.md, tools/loc.py): compiling with
no passes and the plain planner (PlanOptions(regions=False, inline_sigmoid=False)) calls
nothing of the region planner (regions.py), the fused lowering (fused_lowering.py), a rewrite
(passes/) or the CSE keys (keys.py), runs as well with plain stand-ins for tuning.py (no GC
pause, np.errstate), and computes what the reference interpreter computes."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import tapernn as tn
from tapernn import executor, fused_lowering, regions
from tapernn import graph as graph_module
from tapernn.interpret import interpret
from tapernn.passes import DEFAULT

PLAIN = tn.PlanOptions(regions=False, inline_sigmoid=False)


def _lstm_step_and_grad():
    """An LSTM step (sigmoid, tanh, concat, split, matmul, broadcasting) and its gradients."""
    rng = np.random.default_rng(0)
    x, h, c = rng.standard_normal((3, 4)), rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    w, b = rng.standard_normal((9, 20)), rng.standard_normal(20)

    def loss(x, h, c, w, b):
        z = tn.matmul(tn.concat([x, h], axis=1), w) + b
        i, f, o, g = tn.split(z, 4, axis=1)
        c2 = tn.sigmoid(f) * c + tn.sigmoid(i) * tn.tanh(g)
        return tn.sum(tn.sigmoid(o) * tn.tanh(c2) * c2)

    arrays = (x, h, c, w, b)
    return tn.grad(tn.trace(loss, *arrays)), arrays


def _refuse(*args, **kwargs):
    raise AssertionError("the optimisation tier was called")


@pytest.fixture
def no_optimisation_tier(monkeypatch):
    for name in ("__init__", "_node", "_can_overwrite", "_produce"):
        monkeypatch.setattr(regions.RegionWalk, name, _refuse)
    monkeypatch.setattr(regions, "placements", _refuse)
    for name in [k for k, v in vars(fused_lowering.FusedLowering).items() if callable(v)]:
        monkeypatch.setattr(fused_lowering.FusedLowering, name, _refuse)
    patched = 0
    for entry in DEFAULT:  # every rewrite (an until_stable wrapper: the rewrite it repeats)
        fn = getattr(entry, "__wrapped__", entry)
        if not getattr(fn, "__closure__", True):
            monkeypatch.setattr(fn, "__code__", _refuse.__code__)
            patched += 1
    assert patched >= len(DEFAULT) - 2
    monkeypatch.setattr(graph_module, "freeze", _refuse)  # keys.py: Node.attrs_key
    monkeypatch.setattr(executor, "gc_paused", contextlib.nullcontext)  # tuning.py, plainly
    monkeypatch.setattr(executor, "quiet_enter", _plain_quiet_enter)
    monkeypatch.setattr(executor, "quiet_exit", lambda state: state.__exit__(None, None, None))


def _plain_quiet_enter():
    state = np.errstate(**{k: "ignore" if v == "warn" else v for k, v in np.geterr().items()})
    state.__enter__()
    return state


def test_plain_compile_calls_no_optimisation_and_matches_the_interpreter(no_optimisation_tier):
    graph, arrays = _lstm_step_and_grad()
    compiled = tn.compile(graph, passes=[], options=PLAIN)
    got = compiled(*arrays)
    got = got if isinstance(got, (list, tuple)) else [got]
    for a, b in zip(got, interpret(graph, *arrays), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert compiled.program.plan.inplace or compiled.program.plan.buffers  # it did plan


def test_the_guard_sees_the_optimisation_tier(no_optimisation_tier):
    # the same graph with the production options reaches the region planner and fails
    graph, _ = _lstm_step_and_grad()
    with pytest.raises(AssertionError, match="optimisation tier"):
        tn.compile(graph, passes=[])


def test_plain_and_region_plans_agree_with_the_interpreter_in_float32():
    graph, arrays = _lstm_step_and_grad()
    graph32 = tn.grad(
        tn.trace(
            lambda *a: tn.sum(tn.tanh(a[0]) * tn.sigmoid(a[1][:, :4])),
            *(a.astype(np.float32) for a in arrays[:2]),
        )
    )
    for g, xs in ((graph, arrays), (graph32, tuple(a.astype(np.float32) for a in arrays[:2]))):
        want = interpret(g, *xs)
        for options in (PLAIN, tn.PlanOptions()):
            got = tn.compile(g, options=options)(*xs)
            got = got if isinstance(got, (list, tuple)) else [got]
            tol = 1e-5 if xs[0].dtype == np.float32 else 1e-12
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
