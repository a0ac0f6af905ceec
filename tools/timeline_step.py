"""WALL-clock timeline of one owned two-thread training step (issue 19, branch h256): per phase --
forward projection GEMM, forward loop halves, reverse loop halves, dW / dX GEMMs, the rest of
each program (elementwise, Python), the module around the programs -- when each thread runs what,
and how long each thread idles; next to each GEMM phase's standalone lower bound (its flops at
the rate measured for the same GEMM alone at two threads in this process).

Also (branch h256G) per split -- each pair of halves in step order -- the worker's start after
the caller's (the hand-off: submit to the worker's first Python line, ~0.05-0.1 ms on this VM),
both halves' wall and thread CPU and which one ended last; and the step's minor page faults
(resource.getrusage). --nice runs the process in an autogroup of its own at nice -19 (root:
other helpers' processes then preempt neither half; a wall number without it, on a shared
machine, is mostly the others' load).

Run: PYTHONPATH=$PWD python tools/timeline_step.py --configs 32,50,256 --reps 30 [--nice]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tapernn as tn
from tapernn import executor as ex
from tapernn import nn, own_threads
from tapernn.backends import step_loop

OLD = [False]
EV: list = []  # (thread ident, name, t0, t1)
_now = time.perf_counter
_tag = threading.local()


def _start():
    return (_now(), time.thread_time())


def rec(name, t0):
    """An event: (thread, name, wall start, wall end, the thread's CPU in it)."""
    EV.append((threading.get_ident(), name, t0[0], _now(), time.thread_time() - t0[1]))


def instrument():
    real_mm = own_threads._mm

    def mm_half(a, b, out):
        t0 = _start()
        try:
            return real_mm(a, b, out)
        finally:
            rec(f"{getattr(_tag, 'gemm', 'gemm')} half", t0)

    own_threads._mm = mm_half
    real_mm_plain = own_threads._mm_half  # (a plain GEMM's halves: np.matmul, not _mm)

    def mm_plain_half(a, b, out, columns, k):
        t0 = _start()
        try:
            return real_mm_plain(a, b, out, columns, k)
        finally:
            rec(f"{getattr(_tag, 'gemm', 'gemm')} half", t0)

    own_threads._mm_half = mm_plain_half
    real_mm_bias = own_threads._mm_bias

    def mm_bias_half(a, b, out, bias):
        t0 = _start()
        try:
            return real_mm_bias(a, b, out, bias)
        finally:
            rec("gemm + bias half", t0)

    own_threads._mm_bias = mm_bias_half
    real_matmul = own_threads.matmul

    def matmul(a, b, out=None):
        m, k = a.shape[-2:]
        n = b.shape[-1]
        name = f"gemm ({m},{k})x({k},{n})"
        _tag.gemm = name
        t0 = _start()
        try:
            return real_matmul(a, b, out=out)
        finally:
            rec(name, t0)

    for cls in _bound_classes():  # (the halves' loops; the native columns' sides)
        cls.__call__ = _timed_loop(cls.__call__, "columns" if cls is not step_loop._Bound else "")
    real_run = ex.Compiled._run

    def run(self, args):
        t0 = _start()
        try:
            return real_run(self, args)
        finally:
            rec("program", t0)

    ex.Compiled._run = run
    from tapernn import scan_split
    from tapernn.nn import state_grads

    for cls, names in (
        (scan_split.SplitRunner, ("_split", "_halves", "_apart")),
        (step_loop.Halves, ("choose",)),
    ):
        for n in names:
            setattr(cls, n, timed(f"{cls.__name__}.{n}", getattr(cls, n)))
    from tapernn.nn import tap_digest

    state_grads.tap_copies = timed("tap_copies", state_grads.tap_copies)
    tap_digest.fingerprint = timed("fingerprint", tap_digest.fingerprint)
    if hasattr(state_grads, "fingerprint"):  # (a checkout from before hserial: its own name)
        state_grads.fingerprint = tap_digest.fingerprint
    if hasattr(state_grads, "copy_and_digest"):  # (branch hserial: its copies and digests)
        state_grads.copy_and_digest = timed("tap: copy_and_digest", state_grads.copy_and_digest)
    from tapernn.nn import steady_source

    steady_source.tap_copies = state_grads.tap_copies
    from tapernn.nn import module, packing

    for cls, names in (
        (packing.Packing, ("compute_into", "scratch_into", "release_scratch", "release")),
        (module.Module, ("zero_grad_parameters",)),
    ):
        for n in names:  # (before the first call: the steady plan binds these methods)
            real = getattr(cls, n)
            setattr(
                cls, n, staticmethod(timed(n, real)) if n.startswith("release") else timed(n, real)
            )
    packing._zeros = timed("zero check (_zeros)", packing._zeros)
    return matmul


def _bound_classes() -> list:
    """step_loop._Bound, and step_columns.Bound where this checkout has it (branch hcolN)."""
    try:
        from tapernn.backends import step_columns
    except ImportError:
        return [step_loop._Bound]
    return [step_loop._Bound, step_columns.Bound]


def _timed_loop(real, kind: str):
    def bound(self):
        t0 = _start()
        try:
            return real(self)
        finally:
            lo, hi = self.args[:2]
            way = "reverse" if self.loop.reverse else "forward"
            rec(f"loop {way}{' ' + kind if kind else ''} rows {lo}:{hi} half", t0)

    return bound


def _windows(evs, main_id) -> dict:
    """The caller-only windows around each program (issue 19, hcallB), wall seconds: module
    call entry -> its program's start ("head"), the program's end -> the module call's return
    ("foot")."""
    out = {}
    mods = [e for e in evs if e[0] == main_id and e[1] in ("module forward", "module backward")]
    progs = [e for e in evs if e[0] == main_id and e[1] == "program"]
    for m in mods:
        inside = [p for p in progs if m[2] <= p[2] and p[3] <= m[3]]
        if inside:
            name = m[1].split()[1]
            out[f"window: {name} head (entry -> program)"] = inside[0][2] - m[2]
            out[f"window: {name} foot (program -> return)"] = m[3] - inside[-1][3]
    return out


def splits(evs, main_id) -> list:
    """The step's halves paired in order, caller's with the worker's: (name, worker late, caller
    wall, worker wall, caller CPU, worker CPU, worker end - caller end), ms."""
    halves = [e for e in evs if e[1].endswith(" half")]
    cs = [e for e in halves if e[0] == main_id]
    ws = [e for e in halves if e[0] != main_id]
    return [
        (c[1], w[2] - c[2], c[3] - c[2], w[3] - w[2], c[4], w[4], w[3] - c[3])
        for c, w in zip(cs, ws)
    ]


def nice_autogroup() -> str:
    """This process in an autogroup of its own at nice -19 (os.setsid; root): what it did."""
    try:
        os.setsid()
    except OSError:
        pass  # (already a session leader)
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write("-19")
        return open("/proc/self/autogroup").read().strip()
    except OSError as exc:
        return f"not set ({exc})"


def nice_option(ap) -> None:
    """An A/B script's --nice: its own autogroup at nice -19 (`nice_autogroup`)."""
    ap.add_argument("--nice", action="store_true", help="own autogroup at nice -19 (root)")


def apply_nice(args) -> None:
    """With --nice, `nice_autogroup`, and say what it did."""
    if args.nice:
        print(f"autogroup: {nice_autogroup()}")


def tagged(name, fn):
    """fn with its GEMM halves named `name` (np_matmul_sum / _bias call _split directly)."""

    def call(*a, **k):
        _tag.gemm = name
        return fn(*a, **k)

    return call


def timed(name, fn):
    def call(*a, **k):
        t0 = _start()
        try:
            return fn(*a, **k)
        finally:
            rec(name, t0)

    return call


class _Named:
    """A module's stand-in whose function `name` is timed as `label`."""

    def __init__(self, module, name, label):
        self._module = module
        setattr(self, name, timed(label, getattr(module, name)))

    def __getattr__(self, attr):
        return getattr(self._module, attr)


def _runners(seq):
    import gc

    from tapernn import scan_split

    return [o for o in gc.get_objects() if isinstance(o, scan_split.SplitRunner)]


def make(B, T, H, dtype, mm):
    tn.set_backend("numba")
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(H, H)).astype(dtype)
    if OLD[0]:  # (h256's changes off: the bias add after the join)
        seq.set_plan_options(tn.PlanOptions(bias_in_gemm=False))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)

    def step():
        t0 = _start()
        seq.forward(x)
        rec("module forward", t0)
        t1 = _start()
        seq.zero_grad_parameters()
        seq.backward(x, g)
        rec("module backward", t1)

    for _ in range(4):
        step()
    from tapernn import scan_split

    scan_split.zero_fill = timed("SplitRunner zero_fill (lent panels)", scan_split.zero_fill)
    try:  # (branch hcallF: the packed weight's halves, split_pack.py, on both threads)
        from tapernn import split_pack

        split_pack.packed = _Named(split_pack.packed, "pack_panels", "pack (split_pack half)")
    except ImportError:
        pass
    for rn in _runners(seq):
        for k, (loop, pre) in enumerate(rn.loops or ()):
            if pre is not None:
                rn.loops[k] = (loop, timed("prologue (pack panels)", pre))
        # (branch hcallF: the split call's other caller-only pieces before and after its halves)
        rn.over = timed("SplitRunner.over", rn.over)
        for name in ("ys_views", "carry_views"):
            rn.helpers[name] = timed(f"SplitRunner {name}", rn.helpers[name])
    pair = seq._runtime.last.training_pair
    for which, c in (("fwd", pair.forward), ("bwd", pair.last_backward)):
        kw = dict(c.program.fn.__kwdefaults__)
        for name, v in kw.items():
            if name == "np_matmul" and v is own_threads.matmul:
                kw[name] = mm
            elif (
                callable(v)
                and not isinstance(v, type)
                and name not in ("np_matmul",)
                and (name.startswith(("np_add", "scan_run", "tail_matmul", "np_matmul_")))
            ):
                kw[name] = timed(f"{which} {name}", tagged(f"{which} {name}", v))
        c.program.fn.__kwdefaults__ = kw
    return step


def standalone(shapes, dtype, rows, reps=15):
    """{(m, k, n): (GF/s at 2 OpenBLAS threads, GF/s as the owned call's two 1-thread halves)}
    of each GEMM alone, back to back, with the step's layouts: k == `rows` (T*B): a transposed
    view (dW = dG^T @ X); m == rows and n > k: b a transposed view (the projection X @ W^T)."""
    from tapernn.blas import blas_threads

    out = {}
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        a = rng.standard_normal((k, m)).astype(dtype).T if k == rows else None
        if a is None:
            a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((n, k)).astype(dtype).T if m == rows and n > k else None
        if b is None:
            b = rng.standard_normal((k, n)).astype(dtype)
        o = np.empty((m, n), dtype)
        fl = 2.0 * m * k * n

        def two(a=a, b=b, o=o):
            own_threads.matmul(a, b, out=o)

        rates = []
        for how in ("blas2", "owned"):
            ts = []
            for _ in range(reps):
                t = _now()
                if how == "blas2":
                    with blas_threads(2):
                        np.matmul(a, b, out=o)
                else:
                    own_threads.run(lambda _: two(), None)
                ts.append(_now() - t)
            rates.append(fl / np.median(ts[2:]) / 1e9)
        out[(m, k, n)] = tuple(rates)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["32,50,256"])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--show", type=int, default=1, help="print this many steps' event lists")
    ap.add_argument("--old", action="store_true", help="PlanOptions(bias_in_gemm=False)")
    ap.add_argument(
        "--rest",
        type=float,
        default=0.05,
        help="seconds idle before each timed step (0: back to back)",
    )
    nice_option(ap)
    args = ap.parse_args()
    apply_nice(args)
    OLD[0] = args.old
    mm = instrument()
    print(f"load {os.getloadavg()}")
    for text in args.configs:
        B, T, H = (int(v) for v in text.split(","))
        step = make(B, T, H, args.dtype, mm)
        main_id = threading.get_ident()
        per = {}
        walls = []
        table: dict = {}
        shown = 0
        for _ in range(args.reps):
            time.sleep(args.rest)
            EV.clear()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0, p0, c0 = _now(), time.process_time(), time.thread_time()
            step()
            t1 = _now()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            per.setdefault("step minor page faults (count, not ms)", []).append(faults / 1e3)
            walls.append(t1 - t0)
            per.setdefault("step process CPU (both threads)", []).append(time.process_time() - p0)
            per.setdefault("step caller thread CPU", []).append(time.thread_time() - c0)
            evs = sorted(EV, key=lambda e: e[2])
            if shown < args.show and len(walls) > args.reps // 2:
                shown += 1
                print("--- one step, ms from its start (thread: C caller, W worker)")
                for tid, name, a, b, cpu in evs:
                    who = "C" if tid == main_id else "W"
                    print(
                        f"  {who} {(a - t0) * 1e3:7.2f} .. {(b - t0) * 1e3:7.2f}  {(b - a) * 1e3:6.2f}"
                        f"  cpu {cpu * 1e3:6.2f}  {name}"
                    )
            for j, row in enumerate(splits(evs, main_id)):
                table.setdefault((j, row[0]), []).append(row[1:])
            for k, v in _windows(evs, main_id).items():
                per.setdefault(k, []).append(v)
            agg = {}
            busy = {"C": 0.0, "W": 0.0, "C [cpu]": 0.0, "W [cpu]": 0.0}
            for tid, name, a, b, cpu in evs:
                who = "C" if tid == main_id else "W"
                key = f"{who}: {name}"
                agg[key] = agg.get(key, 0.0) + (b - a)
                agg[key + " [cpu]"] = agg.get(key + " [cpu]", 0.0) + cpu
                if name.endswith(" half"):
                    busy[who] += b - a
                    busy[who + " [cpu]"] += cpu
            for k, v in agg.items():
                per.setdefault(k, []).append(v)
            per.setdefault("worker busy (halves)", []).append(busy["W"])
            per.setdefault("caller in halves", []).append(busy["C"])
            per.setdefault("worker busy (halves) [cpu]", []).append(busy["W [cpu]"])
            per.setdefault("caller in halves [cpu]", []).append(busy["C [cpu]"])
        print(
            f"({B},{T},{H}) {args.dtype}: step wall median {np.median(walls) * 1e3:.2f} ms (min {min(walls) * 1e3:.2f})"
        )
        for k in sorted(per):
            v = per[k]
            print(f"    {k:50s} {np.median(v) * 1e3:8.3f} ms  (min {min(v) * 1e3:7.3f})")
        print(
            f"    {'split (caller half, in step order)':44s} W late C wall W wall  C cpu  W cpu  Wend-Cend"
        )
        for (j, name), rows in table.items():
            med = np.median(np.array(rows), 0) * 1e3
            print(f"    {j:2d} {name[:41]:41s} " + " ".join(f"{v:6.3f}" for v in med))
        shapes = set()
        for tid, name, a, b, _ in EV:
            if name.startswith("gemm (") and not name.endswith("half"):
                s = name[6:-1].replace(")x(", ",").split(",")
                shapes.add((int(s[0]), int(s[1]), int(s[3])))
        rates = standalone(sorted(shapes), args.dtype, T * B)
        for (m, k, n), (r2, ro) in rates.items():
            name = f"gemm ({m},{k})x({k},{n})"
            got = per.get(f"C: {name}")
            cnt = sum(1 for e in EV if e[1] == name)
            fl = 2.0 * m * k * n
            if got:
                print(
                    f"    alone {name}: 2-thread BLAS {r2:6.1f} GF/s = {fl / r2 / 1e6:6.3f} ms,"
                    f" owned halves {ro:6.1f} GF/s = {fl / ro / 1e6:6.3f} ms; in the step"
                    f" {np.median(got) * 1e3 / max(cnt, 1):6.3f} ms a call x {cnt}"
                    f" (min {min(got) * 1e3 / max(cnt, 1):6.3f})"
                )
        print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
