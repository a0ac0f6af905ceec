"""A default user's first calls (issue 19, "hearly"): `Sequencer(FastLSTM(H, H))` float32 on an
input (T, B, H), forward / zero_grad_parameters / backward / update_parameters, `--calls`
times, each run in a FRESH process. Prints each call's wall, the main thread's CPU, its time
queued for a core and blocked (wall less both: on the GIL, on an event; from
/proc/thread-self/schedstat) and the process's CPU, grouped (calls 1-9 one by one, 10, 11-99
in blocks, 100, 101-120, the rest in blocks), and what ran then: the BLAS thread tuner's timed
calls (`t1` / `t2`: a call of a program with 1 / the pool's threads in its first round, `c1` /
`c2` a periodic check), "auto"'s trace of numba's plan (`trace`), the numba compile worker's
CPU in the call (`W`) and the CPU of the other threads (`O`: OpenBLAS's pool, tapernn's split
worker), which plan ran (`np` / `nb`; on backend "numba" `np` until its Gate's switch call).

Kernel cache (`--cache`): "cold" points $TAPERNN_KERNEL_CACHE, $TAPERNN_LAYOUT_CACHE and
$NUMBA_CACHE_DIR (tapernn's own cached @njit functions) at a fresh directory per run (a
first-time user); "warm" at /tmp/hearly-warm-cache (unprinted runs fill it first, per checkout
and shape); "shared" leaves the environment alone (~/.cache/tapernn, never cleared).

A/B: `--trees A,B` runs each checkout's tapernn (PYTHONPATH) in turn, fresh processes
alternating, `--runs` each (give copies that do not change meanwhile: `git archive`); `--env "K=V K2=V2"` per tree too (`--env-b`). The summary gives
per-arm medians of the groups' sums.

    python tools/early_calls.py --backend auto --cache cold --runs 2
    python tools/early_calls.py --trees /work/main,$PWD --cache warm --runs 3
    python tools/early_calls.py --backend numba --cache cold --calls 3   # first-call targets
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

WARM_DIR = Path("/tmp/hearly-warm-cache")
HERE = Path(__file__).resolve()


# ---- the child: one user's loop, instrumented -----------------------------------------------


class Probe:
    """What one call did besides its plan: the tuner's timed calls, auto's trace, the compile
    worker's CPU (read through its thread's CPU clock)."""

    def __init__(self) -> None:
        self.tune: list[str] = []
        self.trace_s = 0.0
        self.worker_clock: int | None = None

    def install(self) -> None:
        from tapernn import blas_tuning
        from tapernn.nn import auto_plans

        record, compile_ = blas_tuning._Arm.record, auto_plans.TwoPlans._compile
        probe = self

        def timed_record(arm, n, seconds, *more):
            if arm.calls > 0 and (arm.explore > 0 or n != arm.current):  # (timed trials)
                check = arm.explore == 0
                probe.tune.append(("c" if check else "t") + ("1" if n == 1 else "2"))
            return record(arm, n, seconds, *more)

        def timed_compile(two, trace):
            t = time.perf_counter()
            try:
                return compile_(two, trace)
            finally:
                probe.trace_s += time.perf_counter() - t

        blas_tuning._Arm.record = timed_record
        auto_plans.TwoPlans._compile = timed_compile

    def worker_cpu(self) -> float:
        if self.worker_clock is None:
            for t in threading.enumerate():
                if t.name == "tapernn-numba-compiler" and t.ident is not None:
                    self.worker_clock = time.pthread_getcpuclockid(t.ident)
        if self.worker_clock is None:
            return 0.0
        try:
            return time.clock_gettime(self.worker_clock)
        except OSError:  # (the thread ended)
            return 0.0


def sched() -> tuple[float, float]:
    """(seconds on a CPU, seconds waiting on a run queue) of the calling thread so far
    (/proc/thread-self/schedstat; zeros where there is none): a call's wall less both is the
    time the thread was blocked -- on the GIL, on an event."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            run, queued = f.read().split()[:2]
        return int(run) * 1e-9, int(queued) * 1e-9
    except (OSError, ValueError):
        return 0.0, 0.0


def child(a: argparse.Namespace) -> None:
    t_import = time.perf_counter()
    import numpy as np

    import tapernn as tn
    from tapernn import nn
    from tapernn.backends import background
    from tapernn.nn import auto_plans

    imported = time.perf_counter() - t_import
    if a.nice:  # (after the import, which is timed as is)
        from timeline_step import nice_autogroup

        nice_autogroup()
    probe = Probe()
    probe.install()
    if a.backend != "auto":
        tn.set_backend(a.backend)
    T, B, H = a.shape
    dtype = np.dtype(a.dtype)
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(dtype)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((T, B, H)) * 0.1).astype(dtype)
    g = (rng.standard_normal((T, B, H)) * 0.1).astype(dtype)
    rows = []
    for i in range(1, a.calls + 1):
        probe.tune, probe.trace_s = [], 0.0
        jobs0, w0 = background.activity(), probe.worker_cpu()
        s0 = sched()
        t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)
        seq.update_parameters(1e-3)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        proc, jobs1 = time.process_time() - p0, background.activity()
        s1 = sched()
        worker = max(0.0, probe.worker_cpu() - w0)
        queued = s1[1] - s0[1]
        program = seq._runtime.last.compile_training().forward
        backend = program.program.backend
        if backend == "numba" and "run" in program.__dict__:  # (its Gate: NumPy lowerings)
            backend = "numpy"
        rows.append(
            {
                "i": i,
                "wall": wall,
                "cpu": cpu,
                "proc": proc,
                "worker": worker,
                "other": max(0.0, proc - cpu - worker),
                "queued": queued,
                "blocked": max(0.0, wall - (s1[0] - s0[0]) - queued),
                "tune": probe.tune,
                "trace": probe.trace_s,
                "jobs": jobs1[1] - jobs0[1],
                "busy": jobs1[2] > 0 or jobs1[1] != jobs0[1],
                "plan": backend,
                "numba": background.numba_imported(),
            }
        )
    if a.wait:  # (filling the warm cache: kernels asked for late, the step loops, too)
        tn.backends.wait_for_kernels()
    out = {
        "import": imported,
        "load": os.getloadavg()[0],
        "rows": rows,
        "pending": auto_plans.pending(),
        "tapernn": tn.__file__,
    }
    print("JSON" + json.dumps(out), flush=True)


# ---- the parent: fresh processes, grouped table, A/B summary --------------------------------


def groups(n: int) -> list[tuple[int, int]]:
    """(first, last) call of each printed group: 1..9 alone, 10, 11-99 in blocks of 10 (11-20,
    ..., 91-99), 100, 101-120 in blocks of 5, then blocks of 20."""
    out = [(i, i) for i in range(1, min(n, 10) + 1)]
    lo = 11
    while lo <= min(n, 99):
        out.append((lo, min(lo + 9, 99, n)))
        lo += 10
    if n >= 100:
        out.append((100, 100))
    lo = 101
    while lo <= n:
        width = 5 if lo <= 120 else 20
        out.append((lo, min(lo + width - 1, n)))
        lo += width
    return out


def _plan_tag(rows: list[dict]) -> str:
    plans = {r["plan"] for r in rows}
    return "/".join(sorted("np" if p == "numpy" else "nb" if p == "numba" else p for p in plans))


def table(result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"  import tapernn {result['import']:.2f} s, load at end {result['load']:.1f}, tapernn "
        + result["tapernn"],
        "  calls      wall ms   main CPU   queued  blocked   proc CPU   worker W  other O   what",
    ]
    for lo, hi in groups(len(rows)):
        sel = rows[lo - 1 : hi]
        keys = ("wall", "cpu", "queued", "blocked", "proc", "worker", "other")
        s = {k: sum(r[k] for r in sel) * 1e3 for k in keys}
        tune = [t for r in sel for t in r["tune"]]
        what = [_plan_tag(sel)]
        if tune:
            counts = Counter(tune)
            what.append("tuner " + ",".join(f"{t}x{c}" if c > 1 else t for t, c in counts.items()))
        trace = sum(r["trace"] for r in sel)
        if trace:
            what.append(f"trace {trace * 1e3:.0f} ms")
        if any(r["busy"] for r in sel):
            what.append(f"worker busy ({sum(r['jobs'] for r in sel)} jobs done)")
        if lo <= next((r["i"] for r in rows if r["numba"]), 0) <= hi:
            what.append("numba imported")
        name = f"{lo}" if lo == hi else f"{lo}-{hi}"
        lines.append(
            f"  {name:9s} {s['wall']:8.0f} {s['cpu']:10.0f} {s['queued']:8.0f} {s['blocked']:8.0f} "
            f"{s['proc']:10.0f} "
            f"{s['worker']:10.0f} {s['other']:8.0f}   {'; '.join(what)}"
        )
    return "\n".join(lines)


SPANS = {"1": (1, 1), "2-9": (2, 9), "10": (10, 10), "11-99": (11, 99), "100": (100, 100)}
SPANS.update({"101-120": (101, 120), "121-": (121, 10**9), "all": (1, 10**9)})


def span_sums(result: dict, key: str) -> dict[str, float]:
    rows = result["rows"]
    return {
        name: sum(r[key] for r in rows[lo - 1 : hi]) * 1e3
        for name, (lo, hi) in SPANS.items()
        if len(rows) >= lo
    }


def run_child(a: argparse.Namespace, tree: str, env_text: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = tree
    for item in env_text.split():
        k, _, v = item.partition("=")
        env[k] = v
    tmp = None
    if a.cache == "cold":
        tmp = tempfile.mkdtemp(prefix="hearly-cold-")
        env["TAPERNN_KERNEL_CACHE"] = tmp
        env["TAPERNN_LAYOUT_CACHE"] = os.path.join(tmp, "layout-rule.json")
        env["NUMBA_CACHE_DIR"] = os.path.join(tmp, "numba")  # (tapernn's own @njit too)
    elif a.cache == "warm":
        env["TAPERNN_KERNEL_CACHE"] = str(WARM_DIR)
        env["TAPERNN_LAYOUT_CACHE"] = str(WARM_DIR / "layout-rule.json")
        env["NUMBA_CACHE_DIR"] = str(WARM_DIR / "numba")
    argv = [sys.executable, str(HERE), "--child", "--backend", a.backend, "--dtype", a.dtype]
    argv += ["--calls", str(a.calls), "--shape", ",".join(map(str, a.shape))]
    argv += ["--wait"] if a.wait else []
    argv += ["--nice"] if a.nice else []
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    for line in done.stdout.splitlines():
        if line.startswith("JSON"):
            return json.loads(line[4:])
    raise SystemExit(f"child failed ({tree}):\n{done.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="auto", choices=["auto", "numpy", "numba"])
    ap.add_argument("--cache", default="warm", choices=["warm", "cold", "shared"])
    ap.add_argument("--shape", default="50,32,256", help="T,B,H (a second model: 50,32,512)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--runs", type=int, default=1, help="fresh processes per arm")
    ap.add_argument("--trees", default=str(HERE.parents[1]), help="checkouts, comma-separated")
    ap.add_argument("--env", default="", help="'K=V ...' for every arm")
    ap.add_argument("--env-b", default=None, help="'K=V ...': a second arm per tree")
    ap.add_argument("--quiet", action="store_true", help="the summary only")
    ap.add_argument("--wait", action="store_true", help="wait for every kernel at the end")
    ap.add_argument("--nice", action="store_true", help="each run in its own autogroup at -19")
    ap.add_argument("--json", default=None, help="write every run's rows here")
    a = ap.parse_args()
    a.shape = tuple(int(v) for v in a.shape.split(","))
    if a.child:
        return child(a)
    arms = [(t, a.env) for t in a.trees.split(",")]
    if a.env_b is not None:
        arms += [(t, f"{a.env} {a.env_b}") for t in a.trees.split(",")]
    for tree, env in arms if a.cache == "warm" else ():  # (each tree's own @njit cache too)
        filled = WARM_DIR / ("filled-" + tree.replace("/", "_").replace(":", "_") + str(a.shape))
        if not filled.exists():
            WARM_DIR.mkdir(parents=True, exist_ok=True)
            for backend in ("numba", "auto"):
                calls = 3 if backend == "numba" else 101
                b = argparse.Namespace(**{**vars(a), "backend": backend, "calls": calls})
                b.wait = True
                run_child(b, tree, env)
            filled.touch()
    with open("/proc/loadavg") as f:
        print(f"# {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {f.read().split()[:3]}")
    results: dict[int, list[dict]] = {k: [] for k in range(len(arms))}
    for run in range(a.runs):
        order = range(len(arms)) if run % 2 == 0 else reversed(range(len(arms)))
        for k in order:
            tree, env = arms[k]
            r = run_child(a, tree, env)
            results[k].append(r)
            if not a.quiet:
                print(f"[arm {k}: {tree} {env.strip()}] run {run + 1}, {a.backend}, {a.cache}")
                print(table(r), flush=True)
    keys = ("wall", "cpu", "queued", "blocked", "proc")
    print(f"summary: median over {a.runs} runs of each span's sum, ms ({' / '.join(keys)})")
    for k, (tree, env) in enumerate(arms):
        print(f"  arm {k}: {tree} {env.strip()}")
        sums = {key: [span_sums(r, key) for r in results[k]] for key in keys}
        for name in sums["wall"][0]:
            med = [statistics.median(v[name] for v in sums[key]) for key in keys]
            runs = "  runs' wall/blocked: " + ", ".join(
                f"{w[name]:.0f}/{b[name]:.0f}" for w, b in zip(sums["wall"], sums["blocked"])
            )
            print(f"    {name:8s}" + "".join(f" {m:9.0f}" for m in med) + runs)
    if a.json:
        Path(a.json).write_text(json.dumps({str(k): v for k, v in results.items()}))


if __name__ == "__main__":
    main()
