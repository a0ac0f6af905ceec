"""One half of each loop of a FastLSTM (B, T, H) numba training step taken apart (issue 19,
BENCHMARKS.md "hgate"): the forward's and the reverse's first half (rows 0:B/2) caught with
their own arguments, then called again on this thread beside edited copies of their kernel's
text -- "no pass" (the gate pass's call removed: the step GEMM and the loop alone), "no GEMM"
(the step GEMM's call removed: its output buffer as it is), "no copy" (the reverse's copies of
the dG blocks into the saved row removed) -- and the same text compiled with other LLVM options
(`--llvm`, e.g. `-force-vector-width=8`: 256-bit float32 vectors where the step loops are
compiled 512 bits wide; `=0`: LLVM's cost model's width), and the same text driving another
copy of packed_kernels.py (`--kernel FILE`, e.g. an edited geometry or prefetch: the step
GEMMs as the loop runs them, its gate pass and cache traffic around them; BENCHMARKS.md
"hf64"). Arms are
interleaved, the order reversed every other round; prints each arm's median thread CPU a call
(the edited arms compute other numbers: their time only); every array of the halves'
arguments is put back to the step's values before each call. The edited modules go to the kernel
cache of this process ($TAPERNN_KERNEL_CACHE: point it at a directory of your own).

Run: PYTHONPATH=$PWD python tools/gate_replay.py --config 32,50,256 --dtype float32 \\
         --llvm=-force-vector-width=0 --rounds 21 [--nice] [--kernel /tmp/packed_kernels_v.py]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ab_common import training_step
from timeline_step import apply_nice, nice_option

from tapernn.backends import numba_interleave, packed, step_loop

_GEMM = re.compile(r"_packed\(np\.ascontiguousarray\(\w+\), \w+, (.*)\)$")


def halves(B: int, T: int, H: int, dtype: str) -> list:
    """The forward's and the reverse's first half (step_loop._Bound) of one training step, once
    the step's loops run as numba calls."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    step, _ = training_step(x, g, H)
    caught: list = []
    real = step_loop._Bound.__call__
    step_loop._Bound.__call__ = lambda self: caught.append(self) or real(self)
    try:
        for _ in range(400):  # (a cold cache: the loops compile in the background first)
            caught.clear()
            step()
            if len(caught) == 4:
                break
            time.sleep(0.25)
    finally:
        step_loop._Bound.__call__ = real
    if len(caught) != 4:
        raise SystemExit(f"the loops did not run as numba halves ({len(caught)} calls)")
    return [b for b in caught if b.args[0] == 0]


def restorer(bounds: list):
    """A function putting back the step's values into every array the halves' arguments hold
    (the reverse writes its dG rows over the slab the forward reads its projections from: the
    forward replayed after it would read ever larger values, its sigmoids' tails)."""
    seen = {}
    for b in bounds:
        for a in b.loop.args(b.args):
            if isinstance(a, np.ndarray):
                seen.setdefault(id(a), (a, a.copy()))
    return lambda: [np.copyto(a, v) for a, v in seen.values()]


def edits(source: str) -> dict[str, str]:
    """Edited copies of a half's kernel text by arm name (the lines each removes)."""
    lines = source.split("\n")
    out = {
        "no pass": [re.sub(r"^(\s*)_either\(.*", r"\1pass", s) for s in lines],
        "no GEMM": [re.sub(r"^(\s*\w+ = )" + _GEMM.pattern, r"\1\2", s) for s in lines],
    }
    if any(re.match(r"^\s*_put\(", s) for s in lines):
        out["no copy"] = [re.sub(r"^(\s*)_put\(.*", r"\1pass", s) for s in lines]
    return {k: "\n".join(v) for k, v in out.items() if v != lines}


def marked(text: str, opts: str) -> str:
    """`text` with the first line numba_interleave reads its options from naming the count
    and the vector bits of `opts` (given there: set by `llvm_options`, not from the text)."""
    count = re.search(r"-force-vector-interleave=(\d+)", opts)
    width = re.search(r"-force-vector-width=(\d+)", opts)
    mark = numba_interleave.mark(
        int(count[1]) if count else None, 0 if width else numba_interleave.bits()
    )
    return text.replace(numba_interleave.mark(), mark, 1)


@contextlib.contextmanager
def llvm_options(options: list[str]):
    """numba compiles in the block with LLVM command-line `options` ("-name=value"), each set
    back to `reset`'s value after (under numba's compiler lock, as numba_interleave does)."""
    import llvmlite.binding as ll
    from numba.core.compiler_lock import global_compiler_lock

    with global_compiler_lock:
        for o in options:
            ll.set_option("gate_replay", o)
        try:
            yield
        finally:
            for o in options:
                ll.set_option("gate_replay", o.split("=")[0] + "=0")


def kernel_module(path: str) -> str:
    """The name of `path` (a packed_kernels.py) imported as packed._kernel_module imports this
    checkout's: its geometry line set to this CPU's, written to the kernel cache under its
    digest (the step loops name their driver's module: `driver`)."""
    import hashlib

    from tapernn.backends.kernel_cache import import_written
    from tapernn.backends.numba_backend import cache_dir

    bits, nv = packed.GEOMETRY[packed.isa() or "avx512"]
    line = b"VEC_BITS, NV = 512, 4  # "
    source = Path(path).read_bytes().replace(line, f"VEC_BITS, NV = {bits}, {nv}  # ".encode())
    name = f"tapernn_packed_{hashlib.sha1(source).hexdigest()[:20]}"
    import_written(cache_dir(), name, source)
    return name


def driver(source: str, name: str) -> str:
    """A step loop's text with its packed driver's module (packed._kernel_module's) `name`."""
    ours = packed._kernel_module().__name__
    if ours not in source:
        raise SystemExit("the half's loop calls no packed step GEMM")
    return source.replace(ours, name)


def arm(bound, source: str, options: list[str]):
    """A call of `bound`'s half with the kernel compiled from `source` under `options`."""
    loop = bound.loop
    made = step_loop.StepLoop(source, loop.arrays, loop.length, loop.reverse, loop.late)
    with llvm_options(options):
        if not made.prepare(made.key(bound.args)):
            raise SystemExit(f"compile failed: {made.error}")
    return lambda: made(*bound.args)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="32,50,256")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--llvm", action="append", default=[], help="an arm: LLVM options, spaced")
    ap.add_argument("--kernel", action="append", default=[], help="an arm: a packed_kernels.py")
    nice_option(ap)
    args = ap.parse_args()
    apply_nice(args)
    B, T, H = (int(v) for v in args.config.split(","))
    arms = {}
    bounds = halves(B, T, H, args.dtype)
    restore = restorer(bounds)
    kernels = {path: kernel_module(path) for path in args.kernel}
    for b in bounds:
        side = "reverse" if b.loop.reverse else "forward"
        arms[f"{side} whole"] = b
        for name, text in edits(b.loop.source).items():
            arms[f"{side} {name}"] = arm(b, text, [])
        for opts in args.llvm:
            text = b.loop.source + f"\n# (gate_replay: LLVM {opts})\n"
            arms[f"{side} {opts}"] = arm(b, marked(text, opts), opts.split())
        for path, name in kernels.items():
            arms[f"{side} kernel {Path(path).name}"] = arm(b, driver(b.loop.source, name), [])
    res: dict[str, list[float]] = {k: [] for k in arms}
    print(f"({B}, {T}, {H}) {args.dtype} load {os.getloadavg()}")
    for r in range(args.rounds):
        for k in list(arms)[:: 1 if r % 2 == 0 else -1]:
            restore()
            t = time.thread_time()
            arms[k]()
            res[k].append(time.thread_time() - t)
    for k, v in res.items():
        print(f"    {k:44s} {np.median(v) * 1e3:7.3f} ms  (min {min(v) * 1e3:.3f})")
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
