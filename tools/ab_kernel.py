"""A/B of the packed step GEMM's kernel against another checkout's (issue 19, branch hloopI): this
checkout's packed_kernels.py (the CPU's geometry, packed.isa) and `--other`'s copy of the same
file (e.g. a main checkout's), each driving the same panels, beside OpenBLAS (np.matmul) and
torch.mm, all at one thread, interleaved in one process (rounds alternating in direction),
thread CPU per call, medians (best in brackets), GF/s = 2mkn / time. The two kernels' outputs
are asserted bit-identical (each element one FMA chain over k in order in either) and within
1e-4 (float32) of float64's product.

Run: PYTHONPATH=$PWD python tools/ab_kernel.py --other /work/main [--dtype float32] [--isa avx2]
     [--shapes 16,512,2048 16,2048,512 64,1024,2048 64,4096,512] [--rounds 21]
(the default shapes: the (32, 50, 512) loops' batch halves and the (64, 100, 1024) loops'
column halves, forward and reverse)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # (this checkout's tapernn)

from tapernn.backends import packed

SHAPES = ["16,512,2048", "16,2048,512", "64,1024,2048", "64,4096,512"]


def other_kernels(root: str, kind: str):
    """`root`'s backends/packed_kernels.py imported as a module of its own, its geometry line
    set to instruction set `kind`'s (as packed._kernel_module does)."""
    source = (Path(root) / "tapernn/backends/packed_kernels.py").read_text()
    bits, nv = packed.GEOMETRY[kind]
    source = source.replace("VEC_BITS, NV = 512, 4  # ", f"VEC_BITS, NV = {bits}, {nv}  # ")
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"ab_kernel_other_{os.getpid()}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path.unlink()
    return module


def measure(shape: str, dt: np.dtype, rounds: int, ours, theirs, rng) -> str:
    """One shape's line: each arm's GF/s, median (best), and this kernel's time / the other's."""
    import torch

    m, k, n = (int(v) for v in shape.split(","))
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((k, n)).astype(dt)
    panels = packed.pack_panels(b, nr=ours.NV * ours.lanes(dt))
    outs = {x: np.empty((m, n), dt) for x in ("openblas", "this", "other")}
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    tout = torch.empty((m, n), dtype=ta.dtype)
    arms = {
        "openblas": lambda: np.matmul(a, b, out=outs["openblas"]),
        "torch": lambda: torch.mm(ta, tb, out=tout),
        "other": lambda: theirs.packed_matmul_serial(a, panels, outs["other"]),
        "this": lambda: ours.packed_matmul_serial(a, panels, outs["this"]),
    }
    for f in arms.values():
        f()
    np.testing.assert_array_equal(outs["this"], outs["other"])
    ref = a.astype(np.float64) @ b
    bound = 1e-4 if dt == np.float32 else 1e-12
    assert np.abs(outs["this"] - ref).max() <= bound * np.abs(ref).max(), shape
    rep = max(1, int(2e8 // (2 * m * k * n)))
    times = {x: [] for x in arms}
    for r in range(rounds):
        for name, f in list(arms.items())[:: 1 if r % 2 else -1]:
            c = time.thread_time()
            for _ in range(rep):
                f()
            times[name].append((time.thread_time() - c) / rep)
    flops = 2.0 * m * k * n
    med = {x: float(np.median(v)) for x, v in times.items()}
    row = "  ".join(
        f"{x} {flops / med[x] / 1e9:5.1f} ({flops / min(v) / 1e9:5.1f})" for x, v in times.items()
    )
    return f"({m},{k},{n})  {row}  this/other time {med['this'] / med['other']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", required=True, help="another checkout's root (its kernel: 'other')")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--shapes", nargs="+", default=SHAPES)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--isa", help="the geometry to run (packed.GEOMETRY; default this CPU's)")
    args = ap.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    dt = np.dtype(args.dtype)
    kind = args.isa or packed.isa()
    ours = packed._kernel_module(kind)
    theirs = other_kernels(args.other, kind)
    rng = np.random.default_rng(0)
    print(
        f"kernels {kind} (CPU {packed.isa()})  load {os.getloadavg()}  {dt.name}  GF/s median (best)"
    )
    with threadpool_limits(1, user_api="blas"):
        for shape in args.shapes:
            print(measure(shape, dt, args.rounds, ours, theirs, rng), flush=True)
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
