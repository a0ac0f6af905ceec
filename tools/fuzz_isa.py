"""Kernel-level differential fuzzing at the sizes where this CPU's vector code takes its remainder
paths (hfuzz: the first session on an AVX2-only CPU): the packed GEMM's drivers and random
fused elementwise graphs on the numba backend, against oracles that share none of their code.

- gemm: random (m, k, n) -- m every row-block remainder, n ending inside a vector, a panel and a
  tile -- through packed.run_kernel with the serial driver of this CPU's geometry, the parallel
  one at 2 threads, and the other geometry's serial driver (AVX-512's on AVX2: LLVM splits its
  vectors): each within the rounding bound of any summation order of a @ W taken in float64,
  the three the same bits (each element one FMA chain over k in order), a NaN or Inf in `a` or
  W where np.matmul has them, and no element of `out` outside its window written.
- elementwise: a random chain of exp / tanh / sigmoid / log / sqrt / relu / abs / + - * / /
  maximum / minimum / where over (R, C) operands (C from 1 to 513, a row or column operand
  broadcast, a strided view), with NaN, +-Inf, -0, huge and subnormal values sprinkled in, and
  its gradient: numba's kernels against the NumPy backend -- NaN where NumPy's NaN, the same
  Inf, finite values within `TOL` (float64 1e-12 relative, float32 2e-5: a few ulps of each op
  through the chain).

Run: python tools/fuzz_isa.py [--part gemm|elementwise|all] [--cases 300] [--seed 0]
[--max-failures 10]
Exit status 1 if any case failed; each failure printed with its seed (`--seed S --cases 1`
replays it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("TAPERNN_NUMBA_BACKGROUND", "0")  # kernels from the first call
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import tapernn as tn
from tapernn.backends import packed

TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5}
THREADS, PARALLEL = packed._threads, packed.PARALLEL
ROWS = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65, 255, 257]
WIDTHS = [1, 2, 3, 5, 7, 9, 15, 17, 31, 33, 47, 49, 63, 65, 129, 255, 257, 513]


# ------------------------------------------------------------------------------------ gemm


def _kernels(dtype) -> dict:
    """{name: (serial driver, nr, threads)}: this CPU's serial driver, its parallel one at 2
    threads (run_kernel's opt-in: PARALLEL), the other geometry's serial driver."""
    key = ((np.dtype(dtype).str,),)
    own = packed.handle().isa
    out = {}
    for kind in packed.GEOMETRY:
        h = packed.handle(kind)
        h.prepare(key)
        assert h.has(key), (kind, h.error)
        out[kind] = (h.kernel, packed.panel_width(dtype, kind), 1)
    par = packed._PARALLELS[own]
    par.prepare(key)
    assert key in par.types, par.error
    out["parallel"] = (*out[own][:2], 2)
    return out


def _bound(a, w, dtype):
    a64, w64 = a.astype(np.float64), w.astype(np.float64)
    u = np.finfo(dtype).eps / 2
    k = a.shape[1]
    return a64 @ w64, (2 if dtype == np.float64 else 1) * k * u * (np.abs(a64) @ np.abs(w64))


def gemm_case(seed: int) -> str:
    rng = np.random.default_rng(seed)
    dtype = np.float32 if rng.random() < 0.4 else np.float64
    m, n = int(rng.choice(ROWS)), int(rng.choice(WIDTHS))
    k = int(rng.choice([1, 2, 3, 7, 16, 33, 128, 130, 257, 513]))
    a = rng.standard_normal((m, k)).astype(dtype)
    w = (rng.standard_normal((k, n)) * rng.choice([1.0, 1e-3, 1e3])).astype(dtype)
    special = rng.random() < 0.25
    if special:  # NaN / Inf in an operand: where np.matmul has them
        for arr in (a, w):
            if rng.random() < 0.6:
                idx = tuple(int(rng.integers(s)) for s in arr.shape)
                arr[idx] = rng.choice([np.nan, np.inf, -np.inf])
    if rng.random() < 0.3:  # a transposed view of `a` (run_kernel copies it)
        a = np.ascontiguousarray(a.T).T
    pad = int(rng.integers(0, 5))
    kernels = _kernels(dtype)
    results = {}
    for name, (kernel, nr, threads) in kernels.items():
        big = np.full((m, n + 2 * pad), 7.0, dtype)  # a window of a wider out
        out = big[:, pad : pad + n]
        packed.PARALLEL, packed._threads = threads > 1, lambda t=threads: t
        try:
            packed.run_kernel(kernel, a, packed.pack_panels(w, nr=nr), out)
        finally:
            packed.PARALLEL, packed._threads = PARALLEL, THREADS
        assert np.all(big[:, :pad] == 7.0) and np.all(big[:, pad + n :] == 7.0), (
            f"{name}: wrote outside its window"
        )
        results[name] = out.copy()
    with np.errstate(invalid="ignore", over="ignore"):
        want = np.matmul(a, w)
        exact, bound = _bound(a, w, dtype)
    for name, got in results.items():
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name} NaN")
        inf = np.isinf(want)
        np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{name} Inf")
        fin = np.isfinite(exact) & np.isfinite(bound)
        with np.errstate(invalid="ignore"):
            err = np.abs(got.astype(np.float64) - exact)
        bad = fin & ~(err <= bound + np.finfo(dtype).tiny)
        assert not bad.any(), f"{name}: beyond rounding at {np.argwhere(bad)[:3].tolist()}"
    first = results[packed.handle().isa]
    for name, got in results.items():
        np.testing.assert_array_equal(got, first, err_msg=f"{name} vs serial: not the same bits")
    return f"gemm {np.dtype(dtype).name} ({m}, {k}, {n}) special={special}"


# ---------------------------------------------------------------------------- elementwise

UNARY = ["exp", "tanh", "sigmoid", "log", "sqrt", "relu", "abs", "neg"]
BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "where"]


def _unary(op, v):
    if op == "exp":
        return tn.exp(v * 0.5)
    if op == "log":
        return tn.log(tn.abs(v) + 0.5)
    if op == "sqrt":
        return tn.sqrt(tn.abs(v) + 0.25)
    return {"tanh": tn.tanh, "sigmoid": tn.sigmoid, "relu": tn.relu, "abs": tn.abs}.get(
        op, lambda u: -u
    )(v)


def _binary(op, u, v):
    if op == "div":
        return u / (tn.abs(v) + 0.5)
    if op == "maximum":
        return tn.maximum(u, v)
    if op == "minimum":
        return tn.minimum(u, v)
    if op == "where":
        return tn.where(u > v, u, v * 0.5)
    return {"add": u + v, "sub": u - v, "mul": u * v}[op]


def _operand(rng, shape, dtype, special):
    x = rng.standard_normal(shape) * rng.choice([1.0, 4.0, 30.0])
    if special:
        mask = rng.random(shape) < 0.08
        x[mask] = rng.choice(
            [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e300, -1e300, 5e-324], mask.sum()
        )
    x = x.astype(dtype)
    if rng.random() < 0.3 and x.ndim == 2:  # a strided view: every other column of a wider one
        wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    return x


def elementwise_case(seed: int) -> str:
    rng = np.random.default_rng(seed)
    dtype = np.float32 if rng.random() < 0.4 else np.float64
    R, C = int(rng.choice(ROWS[:12])), int(rng.choice(WIDTHS))
    special = rng.random() < 0.4
    shapes = [(R, C), [(R, C), (C,), (R, 1)][int(rng.integers(3))]]
    xs = [_operand(rng, s, dtype, special) for s in shapes]
    code = []
    for _ in range(int(rng.integers(2, 9))):
        if rng.random() < 0.5:
            code.append(("u", str(rng.choice(UNARY)), int(rng.integers(-2, 0))))
        else:
            code.append(("b", str(rng.choice(BINARY)), int(rng.integers(-3, 0))))

    def fn(a, b):
        vals = [a, b]
        for kind, op, back in code:
            u = vals[-1]
            w = vals[max(back, -len(vals))]
            vals.append(_unary(op, u) if kind == "u" else _binary(op, u, w))
        return tn.sum(vals[-1] * vals[-1]) if grad else vals[-1] + vals[-2]

    for grad in (False, True):
        g = tn.trace(fn, *xs)
        if grad:
            g = tn.grad(g)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            want = _outs(tn.compile(g, backend="numpy"), xs, twice=False)
            c = tn.compile(g, backend="numba")
            got = _outs(c, xs, twice=True)
        for j, (p, q) in enumerate(zip(got, want)):
            _agree(p, q, TOL[np.dtype(dtype)], f"{'grad' if grad else 'value'} output {j}")
    return f"elementwise {np.dtype(dtype).name} ({R}, {C}) {shapes[1]} special={special} {code}"


def _outs(c, xs, twice):
    if twice:
        c(*xs)  # (a second call: the steady path)
    out = c(*xs)
    return [np.array(o) for o in (out if isinstance(out, (tuple, list)) else [out])]


def _agree(got, want, tol, what):
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN")
    inf = np.isinf(want) | np.isinf(got)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{what}: Inf")
    fin = np.isfinite(want) & np.isfinite(got)
    g, w = got[fin].astype(np.float64), want[fin].astype(np.float64)
    scale = np.maximum(1.0, np.abs(w))
    bad = np.abs(g - w) > tol * scale
    assert not bad.any(), f"{what}: {bad.sum()} beyond {tol}, worst {np.max(np.abs(g - w) / scale)}"


PARTS = {"gemm": gemm_case, "elementwise": elementwise_case}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all", choices=[*PARTS, "all"])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-failures", type=int, default=10)
    args = parser.parse_args(argv)
    if not packed.available():
        print("no packed kernel on this CPU (packed.isa() is None)", file=sys.stderr)
        return 2
    parts = list(PARTS) if args.part == "all" else [args.part]
    failures, start = [], time.perf_counter()
    for k, seed in enumerate(range(args.seed, args.seed + args.cases)):
        for part in parts:
            try:
                PARTS[part](seed)
            except Exception as e:  # noqa: BLE001 (every failure reported, then the next case)
                failures.append((part, seed))
                print(f"FAIL {part} seed {seed}: {type(e).__name__}: {str(e).strip()[:800]}")
                print("".join(traceback.format_exception(e)[-3:]).rstrip(), "\n", flush=True)
        if len(failures) >= args.max_failures:
            break
        if (k + 1) % 25 == 0:
            print(
                f"{k + 1} cases, {len(failures)} failed, {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    print(f"{k + 1} cases x {parts} from seed {args.seed}: {len(failures)} failed {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
