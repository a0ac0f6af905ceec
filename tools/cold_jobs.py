"""Where a cold numba start goes, kernel by kernel (issue 19, BENCHMARKS.md "hcold6"): the first
`--calls` training calls (forward, zero_grad_parameters, backward) of a model on backend "numba",
each call's wall / main-thread CPU / process CPU, and every kernel made meanwhile -- each
`prepare` of a fused group's kernel, a whole-loop kernel, a step loop, the packed drivers -- with
its thread, its start and end (seconds from the first call's start) and that thread's CPU in it.

Each run is a FRESH process with a fresh $TAPERNN_KERNEL_CACHE, $TAPERNN_LAYOUT_CACHE and
$NUMBA_CACHE_DIR (a first-time user), `--runs` per arm; arms alternate (`--env-b`: a second
arm, 'K=V ...'). Models: `lstm` = Sequencer(FastLSTM(H, H)) on (T, B, H); `dropout` = `tapernn
train --dropout 0.3 --layers 2`'s CharLM (tools/ab_dropout.py's; float64, T = 32, B = 32).

    PYTHONPATH=$PWD python tools/cold_jobs.py --model lstm --dtype float32 --runs 2
    PYTHONPATH=$PWD python tools/cold_jobs.py --model dropout --env "TAPERNN_NUMBA_BACKGROUND=0"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time


def _probe(t0: list[float], jobs: list) -> None:
    """Wrap every kernel handle's prepare: (thread, what, start, end, thread CPU)."""
    from tapernn.backends import blas_twin, numba_backend, numba_loop, packed, step_loop

    def wrap(cls, what):
        inner = cls.prepare

        def prepare(self, *a, **k):
            s, c = time.perf_counter(), time.thread_time()
            try:
                return inner(self, *a, **k)
            finally:
                e, c = time.perf_counter(), time.thread_time() - c
                if e - s > 0.02:  # (a kernel already made: nothing to say)
                    name = threading.current_thread().name
                    jobs.append((name[:14], what(self), s - t0[0], e - t0[0], c))

        cls.prepare = prepare

    wrap(numba_backend.Kernel, lambda h: "group " + numba_backend._module_name(h.source)[-6:])
    wrap(numba_loop.LoopKernel, lambda h: "whole loop")
    wrap(step_loop.StepLoop, lambda h: ("reverse" if h.reverse else "forward") + " step loop")
    wrap(packed._Handle, lambda h: "packed driver")
    wrap(packed._Parallel, lambda h: "packed parallel")
    if hasattr(packed, "_Packs"):  # (a tree whose driver job compiles the packs too)
        wrap(packed._Packs, lambda h: "packed packs")
    wrap(blas_twin._Handle, lambda h: "own GEMM (blas_twin)")
    try:
        from tapernn.backends import compile_child
    except ImportError:  # (a tree without children)
        return
    inner_wait = compile_child.Job.wait

    def wait(self, timeout=None):
        why = inner_wait(self, timeout)
        start = self.started - (time.monotonic() - time.perf_counter())
        what = "child " + self.name[-6:] + (f" FAILED: {why[:80]}" if why else "")
        jobs.append(("child", what, start - t0[0], time.perf_counter() - t0[0], 0.0))
        return why

    compile_child.Job.wait = wait
    server = getattr(compile_child, "Server", None)
    if server is None:  # (a tree without the compile server)
        return
    inner_init, inner_send, inner_reply = server.__init__, server.send, server.reply
    sent = {}  # id(server) -> (start, what) of what it does now

    def init(self):
        sent[id(self)] = (time.perf_counter(), "server start")
        inner_init(self)

    def send(self, recipe):
        (_, cls, args), _, _ = recipe
        what = "group " + numba_backend._module_name(args[0])[-6:] if cls == "Kernel" else cls
        sent[id(self)] = (time.perf_counter(), what)
        return inner_send(self, recipe)

    def reply(self, timeout):
        got = inner_reply(self, timeout)
        start, what = sent.pop(id(self), (time.perf_counter(), "?"))
        what += "" if got in ("ok", "ready") else f" -> {got}"
        jobs.append(("child server", what, start - t0[0], time.perf_counter() - t0[0], 0.0))
        return got

    server.__init__, server.send, server.reply = init, send, reply


def child(args: argparse.Namespace) -> None:
    import numpy as np

    t0, jobs = [time.perf_counter()], []
    _probe(t0, jobs)
    import tapernn as tn
    from tapernn import nn

    tn.set_backend("numba")
    tn.manual_seed(0)
    if args.model == "lstm":
        T, B, H = map(int, args.shape.split(","))
        model = nn.Sequencer(nn.FastLSTM(H, H)).astype(np.dtype(args.dtype))
        x = (np.random.default_rng(0).standard_normal((T, B, H)) * 0.1).astype(args.dtype)
        g = np.ones_like(x)

        def call():
            model.forward(x)
            model.zero_grad_parameters()
            model.backward(x, g)

    else:
        from tapernn.apps.charlm import CharLM

        lm = CharLM(60, nn.FastLSTM, 2, 64, 256, 0.3, dtype="float64")
        model = lm.model.training()
        ids = np.random.default_rng(0).integers(0, 60, (32, 32))

        def call():
            y = model.forward(ids)
            model.zero_grad_parameters()
            model.backward(ids, np.cos(y))

    calls = []
    t0[0] = time.perf_counter()
    for _ in range(args.calls):
        w, c, p = time.perf_counter(), time.thread_time(), time.process_time()
        call()
        calls.append((time.perf_counter() - w, time.thread_time() - c, time.process_time() - p))
    drain = time.perf_counter()
    from tapernn.backends import background

    background.wait()  # (what the worker still had: step loops, own GEMM)
    drain = time.perf_counter() - drain
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # (compile children ended and reaped)
    out = {"calls": calls, "jobs": jobs, "load": os.getloadavg()[0], "drain": drain}
    print(json.dumps({**out, "children_cpu": kids.ru_utime + kids.ru_stime}))


def run(args: argparse.Namespace, env_text: str) -> dict:
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in env_text.split())
    argv = ["--model", args.model, "--shape", args.shape, "--dtype", args.dtype]
    return cold_run(os.path.abspath(__file__), argv + ["--calls", str(args.calls)], env)


def cold_run(script: str, argv: list, env: dict) -> dict:
    """`script --child *argv` in a fresh process with fresh kernel, layout and numba caches
    (removed after); its last stdout line as JSON."""
    cold = tempfile.mkdtemp(prefix="hcold6-cache-", dir="/tmp")
    env = dict(env, TAPERNN_KERNEL_CACHE=os.path.join(cold, "kernels"))
    env["TAPERNN_LAYOUT_CACHE"] = os.path.join(cold, "layout.json")
    env["NUMBA_CACHE_DIR"] = os.path.join(cold, "numba")
    try:
        cmd = [sys.executable, script, "--child", *argv]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(cold, ignore_errors=True)
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def show(label: str, got: dict) -> None:
    calls = "  ".join(f"{w:.2f}/{c:.2f}/{p:.2f}" for w, c, p in got["calls"])
    print(f"[{label}] load {got['load']:.1f}  calls wall/main CPU/proc CPU s: {calls}", end="")
    print(f"  then the worker's rest {got['drain']:.2f} s wall", end="")
    print(f"; children's CPU {got.get('children_cpu', 0):.2f} s")
    for name, what, s, e, c in sorted(got["jobs"], key=lambda j: j[2]):
        print(f"    {name:14s} {what:22s} {s:6.2f} -> {e:6.2f}  CPU {c:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="lstm", choices=["lstm", "dropout"])
    ap.add_argument("--shape", default="50,32,256", help="T,B,H (lstm)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--env", default="", help="'K=V ...' for every arm")
    ap.add_argument("--env-b", default=None, help="'K=V ...': a second arm, alternating")
    args = ap.parse_args()
    if args.child:
        return child(args)
    arms = [args.env] + ([f"{args.env} {args.env_b}"] if args.env_b is not None else [])
    for r in range(args.runs):
        for k, env_text in enumerate(arms):
            show(f"arm {k} run {r + 1}: {env_text.strip() or 'default'}", run(args, env_text))


if __name__ == "__main__":
    main()
