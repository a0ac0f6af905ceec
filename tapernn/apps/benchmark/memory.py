"""Measured memory of a steady training loop: tracemalloc for tapernn (NumPy reports its array
allocations to it), the profiler's allocation events for PyTorch; side by side with the BPTT
minimum and with the compile report's number (`memory` table of tools/bench.py)."""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from collections.abc import Callable

import numpy as np

NUMPY_DOMAIN = 389047  # NumPy's tracemalloc domain for array data (NPY_TRACE_DOMAIN)


def _array_bytes(snapshot: tracemalloc.Snapshot) -> int:
    arrays = snapshot.filter_traces([tracemalloc.DomainFilter(True, NUMPY_DOMAIN)])
    return sum(t.size for t in arrays.traces)


def loop_peak_bytes(step: Callable[[], object], warmup: int = 3, steps: int = 3) -> int:
    """Most bytes a steady training loop holds at once beyond what existed before its first
    step (the model's parameters and gradients, the data, the optimiser): `step` is run
    `warmup` times (compiling; a numba program's kernel is switched to at its second call and
    the steady path's scratch runner is built at the call after: 3 by default), and on while a
    layout re-check is not settled (the model holds both layouts' programs until then:
    nn/layout_recheck) and while "auto" has not switched to numba's plan (nn/auto_plans: up to
    its switch call; the window before holds both plans' programs), once more after numba's
    background compiles are done (a split loop's step loops take over at the first call after
    theirs), then `steps` times while tracemalloc records the peak.

    What counts: every array the loop allocates and keeps or frees (buffer arenas, saved
    activations, outputs, gradients, temporaries). What does not: the Python objects
    compilation leaves behind (graphs, generated source: non-array memory that grew over the
    warm-up steps, constant across steady steps), which are not per-step memory."""
    from ...backends import kernel_calls, wait_for_kernels
    from ...nn import auto_plans, layout_recheck

    # (numba kernels compiling in the background -- this model's or an earlier one's -- are not
    # the loop's memory: tracemalloc traces every thread, a cold compile holds ~1-4 MB)
    wait_for_kernels()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        before_objects = before - _array_bytes(tracemalloc.take_snapshot())
        for _ in range(max(warmup, kernel_calls())):  # (numba's packed GEMMs from its packed call)
            step()
        for _ in range(layout_recheck.STEPS):  # (a layout re-check runs before the steady loop)
            if not layout_recheck.pending():
                break
            step()
        for _ in range(auto_plans.plan_calls()[1]):  # ("auto": to numba's plan, nn.auto_plans)
            if not auto_plans.pending():
                break
            step()
        wait_for_kernels()
        step()  # (a split loop's step loops take over at the first call after their compile)
        for _ in range(3):  # (that call may have asked for kernels: none may compile in the window)
            if wait_for_kernels(0):
                break
            wait_for_kernels()
            step()
        gc.collect()
        now = tracemalloc.get_traced_memory()[0]
        compiled_objects = now - _array_bytes(tracemalloc.take_snapshot()) - before_objects
        tracemalloc.reset_peak()
        for _ in range(steps):
            step()
        peak = tracemalloc.get_traced_memory()[1]
        return peak - before - max(compiled_objects, 0)
    finally:
        if not was_tracing:
            tracemalloc.stop()


def tapernn_loop_step(
    seq, x: np.ndarray, grad_h: np.ndarray, need_grad_input: bool = True
) -> Callable[[], None]:
    """One step of the loop the bench times: zero the gradients, forward, backward with a
    fixed output gradient (held by the caller, like the data), SGD update."""

    def step() -> None:
        seq.zero_grad_parameters()
        seq.forward(x)
        seq.backward(x, grad_h, need_grad_input=need_grad_input)
        seq.update_parameters(1e-3)

    return step


def torch_loop_peak_bytes(
    B: int, T: int, D: int, H: int, dtype, warmup: int = 2, steps: int = 3
) -> int | None:
    """The same measure for PyTorch's nn.LSTM (None if torch is not importable): its CPU
    allocations are not seen by tracemalloc, so they are read from the profiler's memory events
    (each allocation and free, in time order) over `steps` steady steps. The parameter
    gradients exist before (zeroed in place, as tapernn's), the input gradient is set to None
    each step (tapernn's grad_input is a new array each step)."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    tdtype = {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]
    lstm = torch.nn.LSTM(D, H).to(tdtype)
    for p in lstm.parameters():
        p.grad = torch.zeros_like(p)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((T, B, D)).astype(dtype)).requires_grad_(True)
    g = torch.from_numpy(rng.standard_normal((T, B, H)).astype(dtype))

    def step() -> None:
        lstm.zero_grad(set_to_none=False)
        x.grad = None
        out, _ = lstm(x)
        out.backward(g)
        with torch.no_grad():
            for p in lstm.parameters():
                p.add_(p.grad, alpha=-1e-3)

    for _ in range(warmup):
        step()
    x.grad = None  # the level before the first step: no input gradient yet
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(steps):
            step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def measured_rows(
    B: int,
    T: int,
    D: int,
    H: int,
    dtype,
    peers: bool,
    cells: list[str] | None = None,
    backends: tuple = (None,),
) -> list[str]:
    """The measured table: per tapernn cell and backend (None: the current one; a name is shown
    in the label, as in the timing rows) a fresh Sequencer (its compilation counts; for FastLSTM
    also rolled, `unroll=False`): the steady loop's tracemalloc peak, the compile report's
    number for it and their ratio, against the BPTT minimum T*B*5H*itemsize; with `peers`,
    PyTorch nn.LSTM's loop peak. (A named backend measures that backend's program: under
    "auto" a small program runs NumPy's for its first calls, while its report is numba's.)"""
    from .reference import min_saved_bytes
    from .timing import tapernn_factories

    minimum = min_saved_bytes(B, T, H, dtype)
    unit, scale = ("MiB", 2**20) if minimum >= 2**20 else ("KiB", 2**10)
    header = (
        f"  {'tapernn loop peak ' + unit:<34} {'real':>8} {'real/min':>9} "
        f"{'report':>8} {'real/report':>12}"
    )
    rows = [header]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    factories = tapernn_factories()
    for label, (factory, _) in ({} if isinstance(factories, str) else factories).items():
        if factory is None or (cells and label not in cells):
            continue
        from tapernn import PlanOptions, nn

        # the default program, then (FastLSTM) the other one: rolled below 129 steps
        programs = [(label, None)] + ([(label + " rolled", False)] if label == "FastLSTM" else [])
        for (name, unroll), backend in itertools.product(programs, backends):
            seq = nn.Sequencer(factory(D, H), unroll=unroll).astype(dtype)
            if backend:
                seq.set_plan_options(PlanOptions(backend=backend))
                name += f" [{backend}]"
            real = loop_peak_bytes(tapernn_loop_step(seq, x, g))
            report = seq.compile_report().peak_bytes
            rows.append(
                f"  {name + ' (tracemalloc)':<34} {real / scale:>8.2f} "
                f"{real / minimum:>8.2f}x {report / scale:>8.2f} {real / report:>11.3f}x"
            )
    if peers:
        real = torch_loop_peak_bytes(B, T, D, H, dtype)
        name = "torch nn.LSTM (profiler)"
        rows.append(
            f"  {name:<34} "
            + (
                "torch not importable"
                if real is None
                else f"{real / scale:>8.2f} {real / minimum:>8.2f}x"
            )
        )
    return rows
