"""Where the CPU of tapernn's (B, T, H) FastLSTM training step goes (issue 19, branch hloop):
thread CPU time per part, for the step run in ONE thread (own_threads "on" with the worker
replaced by an inline executor: the split's halves one after the other; and own_threads "off"
at BLAS 1 thread: unsplit) and owned (two threads: the caller's and the worker's CPU apart).
Parts: the forward and backward programs' loops (scan runners), their time-batched GEMMs
(np_matmul), the rest of each program (prologue packing, bias add / sum, Python), and the
module's work around the programs (step minus programs).

Run: PYTHONPATH=$PWD python tools/parts_loop.py --configs 32,50,256 --reps 20
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapernn as tn
from tapernn import executor as ex
from tapernn import nn, own_threads, scan_split
from tapernn.blas import blas_threads

ACC: dict[str, float] = {}
_depth = threading.local()


def _add(name, dt):
    ACC[name] = ACC.get(name, 0.0) + dt


class Inline:
    def submit(self, f, *a, **k):
        fut = Future()
        t0 = time.thread_time()
        try:
            fut.set_result(f(*a, **k))
        except BaseException as e:  # noqa: BLE001
            fut.set_exception(e)
        _add("worker half (inline)", time.thread_time() - t0)
        return fut


def instrument():
    real_split = scan_split.SplitRunner.__call__

    def split_call(self, *a, out=None):
        t0 = time.thread_time()
        try:
            return real_split(self, *a, out=out)
        finally:
            _add("loops", time.thread_time() - t0)

    scan_split.SplitRunner.__call__ = split_call
    real_mm = own_threads.matmul

    def mm(a, b, out=None):
        if threading.get_ident() in own_threads.worker_ident:
            return real_mm(a, b, out=out)
        t0 = time.thread_time()
        try:
            return real_mm(a, b, out=out)
        finally:
            _add("time-batched GEMMs", time.thread_time() - t0)

    own_threads.matmul = mm
    real_run = ex.Compiled._run

    def run(self, args):
        t0 = time.thread_time()
        try:
            return real_run(self, args)
        finally:
            _add("programs", time.thread_time() - t0)

    ex.Compiled._run = run
    return mm


def worker_cpu() -> float:
    """CPU seconds of the split worker thread(s) so far (/proc/self/task)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                s = f.read()
            name = s[s.index("(") + 1 : s.rindex(")")]
            v = s.rsplit(")", 1)[1].split()
            if name.startswith("tapernn-split"):
                total += (int(v[11]) + int(v[12])) / tick
        except OSError:
            pass
    return total


def make(B, T, H, dtype, mode, mm):
    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(dtype)
    seq.set_plan_options(tn.PlanOptions(own_threads=mode))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)

    def step():
        seq.forward(x)
        seq.zero_grad_parameters()
        seq.backward(x, g)

    for _ in range(4):
        step()
    # (own_mode binds own_threads.matmul at compile time: rebind the instrumented one)
    for c in (
        seq._runtime.last.training_pair.forward,
        seq._runtime.last.training_pair.last_backward,
    ):
        kw = dict(c.program.fn.__kwdefaults__)
        if "np_matmul" in kw and mode != "off":
            kw["np_matmul"] = mm
            c.program.fn.__kwdefaults__ = kw
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    mm = instrument()
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        arms = {
            "one thread, split inline": make(B, T, H, args.dtype, "on", mm),
            "one thread, unsplit": make(B, T, H, args.dtype, "off", mm),
            "owned (2 threads)": make(B, T, H, args.dtype, "on", mm),
        }
        res = {k: {} for k in arms}
        real_exec = own_threads.executor
        for _ in range(args.reps):
            for k, f in arms.items():
                time.sleep(0.03)
                ACC.clear()
                if k.startswith("one thread, split"):
                    own_threads.executor = lambda: Inline()
                w0 = worker_cpu()
                t0, c0 = time.perf_counter(), time.thread_time()
                if k.endswith("unsplit"):
                    with blas_threads(1):
                        f()
                else:
                    f()
                d = {
                    "step (caller thread)": time.thread_time() - c0,
                    "wall": time.perf_counter() - t0,
                }
                d["worker thread"] = worker_cpu() - w0
                own_threads.executor = real_exec
                d.update(ACC)
                for n, v in d.items():
                    res[k].setdefault(n, []).append(v)
        for k, d in res.items():
            print(f"({B},{T},{H}) {args.dtype} {k}:")
            for n, v in d.items():
                print(f"    {n:28s} {np.median(v) * 1e3:8.2f} ms (min {min(v) * 1e3:.2f})")
        print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
