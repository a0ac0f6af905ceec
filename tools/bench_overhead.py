"""The Module API's fixed per-call cost at small sizes (issue 19): per call of zero_grad_parameters,
forward, backward and update_parameters (and forget, stepped), the time inside the compiled
programs (`Compiled._run`) and everything else, for Sequencer(LSTM / FastLSTM / GRU) rolled and
unrolled and a stepped LSTM (module.forward per step), float32 and float64.

    python tools/bench_overhead.py                      # (B, T, H) = (1, 5, 5), every model
    python tools/bench_overhead.py --models LSTM stepped --dtypes float32 --unroll 1
    python tools/bench_overhead.py --baseline /work/main   # that checkout's tapernn, interleaved

With --baseline the other checkout's package is imported under another name in the same process
and the two run in alternating rounds (medians of per-call times; expect +-10 % under load).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("LSTM", "FastLSTM", "GRU", "stepped")


def load_package(root: str, alias: str):
    """The tapernn package of checkout `root`, imported as module `alias`."""
    init = os.path.join(root, "tapernn", "__init__.py")
    spec = importlib.util.spec_from_file_location(
        alias, init, submodule_search_locations=[os.path.dirname(init)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


class Probe:
    """Accumulates the seconds spent inside `Compiled._run` of one package (the programs)."""

    def __init__(self, tn) -> None:
        self.seconds = 0.0
        compiled = tn.executor.Compiled
        inner = compiled._run
        probe = self

        def _run(self, args):
            t0 = time.perf_counter()
            try:
                return inner(self, args)
            finally:
                probe.seconds += time.perf_counter() - t0

        compiled._run = _run


def make_step(tn, model: str, unroll: bool, dtype: str, B: int, T: int, H: int):
    """(phases, one training step) of `model`; each phase is (name, callable)."""
    nn = tn.nn
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    if model == "stepped":
        m = nn.LSTM(H, H).astype(dtype)
        fwd = [(lambda t=t: m.forward(x[t])) for t in range(T)]
        bwd = [(lambda t=t: m.backward(x[t], g[t])) for t in reversed(range(T))]
        return m, [
            ("forget", [m.forget]),
            ("zero_grad", [m.zero_grad_parameters]),
            ("forward", fwd),
            ("backward", bwd),
            ("update", [lambda: m.update_parameters(1e-3)]),
        ]
    m = nn.Sequencer(getattr(nn, model)(H, H), unroll=unroll).astype(dtype)
    return m, [
        ("zero_grad", [m.zero_grad_parameters]),
        ("forward", [lambda: m.forward(x)]),
        ("backward", [lambda: m.backward(x, g)]),
        ("update", [lambda: m.update_parameters(1e-3)]),
    ]


class Runner:
    """One package's model: runs steps, recording per-call and per-program seconds per phase."""

    def __init__(self, tn, probe: Probe, model, unroll, dtype, shape) -> None:
        self.probe = probe
        self.module, self.phases = make_step(tn, model, unroll, dtype, *shape)
        self.calls: dict[str, list[float]] = {name: [] for name, _ in self.phases}
        self.programs: dict[str, list[float]] = {name: [] for name, _ in self.phases}
        self.steps: list[float] = []
        self.run(20, record=False)

    def run(self, n: int, record: bool = True) -> None:
        clock, probe = time.perf_counter, self.probe
        for _ in range(n):
            start = clock()
            for name, calls in self.phases:
                for call in calls:
                    p0 = probe.seconds
                    t0 = clock()
                    call()
                    t1 = clock()
                    if record:
                        self.calls[name].append(t1 - t0)
                        self.programs[name].append(probe.seconds - p0)
            if record:
                self.steps.append(clock() - start)

    def rows(self) -> dict[str, tuple[float, float]]:
        """phase -> (median us per call, median us inside programs per call)."""
        return {
            name: (
                statistics.median(self.calls[name]) * 1e6,
                statistics.median(self.programs[name]) * 1e6,
            )
            for name, _ in self.phases
        }

    def step_us(self) -> float:
        return statistics.median(self.steps) * 1e6


def configs(args) -> list[tuple[str, bool, str]]:
    out = []
    for model in args.models:
        for dtype in args.dtypes:
            for unroll in [True] if model == "stepped" else args.unroll:
                out.append((model, unroll, dtype))
    return out


def label(model: str, unroll: bool, dtype: str) -> str:
    if model == "stepped":
        return f"LSTM stepped {dtype}"
    return f"Sequencer({model}) {'unrolled' if unroll else 'rolled'} {dtype}"


def report(name: str, runners: list[tuple[str, Runner]]) -> None:
    print(f"\n{name}")
    tags = [tag for tag, _ in runners]
    head = "  phase        " + "".join(
        f"{tag + ' call':>13}{'program':>9}{'other':>8}" for tag in tags
    )
    print(head + ("   other new/base" if len(runners) == 2 else ""))
    rows = [r.rows() for _, r in runners]
    for phase in rows[0]:
        line = f"  {phase:<12}"
        others = []
        for row in rows:
            call, prog = row[phase]
            others.append(call - prog)
            line += f"{call:13.1f}{prog:9.1f}{call - prog:8.1f}"
        if len(others) == 2 and others[1] > 0:
            line += f"   {others[0] / others[1]:.2f}x"
        print(line)
    line = "  whole step  " + "".join(f"{r.step_us():13.1f}{'':17}" for _, r in runners)
    if len(runners) == 2:
        line += f"   {runners[0][1].step_us() / runners[1][1].step_us():.2f}x"
    print(line + "  (us; medians)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument(
        "--dtypes", nargs="+", choices=("float32", "float64"), default=["float32", "float64"]
    )
    ap.add_argument(
        "--unroll",
        nargs="+",
        type=lambda s: s in ("1", "true", "True"),
        default=[True, False],
        help="1 (unrolled) and/or 0 (rolled)",
    )
    ap.add_argument("--shape", default="1,5,5", help="B,T,H (default 1,5,5)")
    ap.add_argument("--steps", type=int, default=400, help="timed steps per package and config")
    ap.add_argument("--rounds", type=int, default=8, help="alternations with --baseline")
    ap.add_argument("--baseline", help="another checkout whose tapernn runs interleaved")
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    sys.path.insert(0, HERE)
    import tapernn as tn

    tn.set_blas_threads(1)
    packages = [("new", tn, Probe(tn))]
    if args.baseline:
        base = load_package(os.path.abspath(args.baseline), "tapernn_baseline")
        base.set_blas_threads(1)
        packages.append(("base", base, Probe(base)))
    print(
        f"tapernn per-call cost, (B, T, H) = {shape}, load average {os.getloadavg()[0]:.2f}; "
        "'program' = inside the compiled programs, 'other' = the rest of the call"
    )
    for model, unroll, dtype in configs(args):
        runners = [
            (tag, Runner(pkg, probe, model, unroll, dtype, shape)) for tag, pkg, probe in packages
        ]
        per_round = max(1, args.steps // args.rounds)
        for _ in range(args.rounds):
            for _, r in runners:
                r.run(per_round)
        report(label(model, unroll, dtype), runners)


if __name__ == "__main__":
    main()
