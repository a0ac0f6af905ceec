"""A projection's bias added inside the halves of its split GEMM (issue 19, BENCHMARKS.md "h256";
PlanOptions.bias_in_gemm): in a program whose calls own both cores (own_threads.py), the lines

    X = np_matmul(A, B, out=O)
    Y = X.reshape(S)
    del X                      (optional)
    Z = np_add(Y, C, out=Y)

(a time-batched input projection and its bias, as codegen writes them) become one call of
own_threads.matmul_bias(A, B, C, S, out=O) -- each thread adds its half's bias right after its
half of the GEMM, while the rows are in its cache, instead of one serial pass over the whole
product after the join -- and `Z = Y`. Likewise a GEMM line followed by the column sum of
another array (the bias gradient next to the weight gradient's GEMM),

    R = np_matmul(A, B, out=O)
    S = np_add_reduce(X, AX, None, keepdims=False)

becomes `R, S = np_matmul_sum(A, B, X, AX, out=O)` and `pass`: each GEMM half also sums half of
X's columns. Line for line (the program's line -> node map stays true). Same arithmetic per
element; from blas_gemm.MIN_BYTES of output the bias is copied into the product and the BLAS's
GEMM accumulates onto it (own_threads.matmul_bias: the same bits where the depth fits one of
the BLAS's K blocks, else other last bits). A program whose calls are not owned (the NumPy
backend) fuses its bias adds alone, when it has a GEMM that large (`fuse_unowned`): its
matmul_bias runs the whole GEMM onto the bias."""

from __future__ import annotations

import builtins
import re
from typing import Any

from . import blas_gemm, own_threads

_MM = re.compile(r"^    (\w+) = np_matmul\((\w+), (\w+)(?:, out=(\w+))?\)$")
_MM_ANY = re.compile(r"^    (\w+) = np_matmul\((\w+), (\w+)(?:, out=([\w\[\]]+))?\)$")
_SUM = re.compile(r"^    (\w+) = np_add_reduce\((\w+), (\w+), None, keepdims=False\)$")
_HEAD = re.compile(r"^def (\w+)\((.*), \*, (.*)\):$")
FUSED = [0]  # bias adds and sums moved into GEMM halves so far (tests)
_BOUND = {"np_matmul_bias": own_threads.matmul_bias, "np_matmul_sum": own_threads.matmul_sum}


def rewrite(source: str, with_sums: bool = True) -> tuple[str, int]:
    """(`source` with each matmul + in-place bias add pattern fused -- and, `with_sums`, each
    GEMM + column sum pair --, how many)."""
    lines = source.split("\n")
    count = 0
    for i, line in enumerate(lines):
        m = _MM.match(line)
        if m is None or i + 3 >= len(lines):
            continue
        x, a, b, o = m.groups()
        r = re.match(rf"^    (\w+) = {x}\.reshape\((\w+)\)$", lines[i + 1])
        if r is None:
            continue
        y, s = r.groups()
        j = i + 3 if lines[i + 2] == f"    del {x}" else i + 2
        add = re.match(rf"^    (\w+) = np_add\({y}, (\w+), out={y}\)$", lines[j])
        if add is None or add.group(2) in (x, y, a, b, o):
            continue
        z, c = add.groups()
        lines[i] = f"    {x} = np_matmul_bias({a}, {b}, {c}, {s}, out={o or 'None'})"
        lines[j] = f"    {z} = {y}"
        count += 1
    sums = 0
    for i, line in enumerate(lines if with_sums else ()):  # GEMM + the next line's column sum
        m = _MM_ANY.match(line)
        r = _SUM.match(lines[i + 1]) if m is not None and i + 1 < len(lines) else None
        if r is None or r.group(2) in (m.group(1), m.group(2), m.group(3)):
            continue
        (x, a, b, o), (s, v, ax) = m.groups(), r.groups()
        lines[i] = f"    {x}, {s} = np_matmul_sum({a}, {b}, {v}, {ax}, out={o or 'None'})"
        lines[i + 1] = "    pass"
        sums += 1
    if count or sums:
        head = _HEAD.match(lines[0])
        if head is None:
            return source, 0
        extra = ", np_matmul_bias" * bool(count) + ", np_matmul_sum" * bool(sums)
        lines[0] = f"def {head.group(1)}({head.group(2)}, *, {head.group(3)}{extra}):"
    return "\n".join(lines), count + sums


def fuse(program: Any, with_sums: bool = True) -> int:
    """Rewrite `program` (codegen.Program, top level; owned: np_matmul bound to
    own_threads.matmul, else `with_sums` False -- the bias adds alone, `fuse_unowned`): its function
    made again from the rewritten source, same bound values plus np_matmul_bias (and
    np_matmul_sum). Returns how many lines moved (0: unchanged)."""
    source, count = rewrite(program.source, with_sums)
    if not count:
        return 0
    head = source.split("\n", 1)[0]
    refit(program, source, {k: v for k, v in _BOUND.items() if f", {k}" in head})
    FUSED[0] += count
    return count


def refit(program: Any, source: str, bound: dict[str, Any]) -> None:
    """Make `program`'s function again from its rewritten `source` (same file name: the line ->
    node map stays true), bound to the old function's values plus `bound`; a background
    kernel's Site bound to the old function is attached to the new one (its switch rebinds
    there). own_room.fuse's too."""
    from .backends.background import Site

    old = program.fn
    name = _HEAD.match(source.split("\n", 1)[0]).group(1)
    namespace: dict[str, Any] = {}
    exec(builtins.compile(source, program.filename, "exec"), namespace)  # noqa: S102 (our source)
    fn = namespace[name]
    fn.__kwdefaults__ = {**(old.__kwdefaults__ or {}), **bound}
    for k, v in fn.__kwdefaults__.items():
        if isinstance(v, Site) and v.owner is not None and v.owner() is old:
            v.attach(fn, k)
    program.fn, program.source = fn, source


def fuse_unowned(program: Any, nodes: list) -> int:
    """`fuse(program, with_sums=False)` for a program whose calls are not owned (the NumPy backend,
    own_threads off, a loop that does not split) when one of its top-level `nodes` is a GEMM
    of at least blas_gemm.MIN_BYTES: there matmul_bias runs the whole GEMM onto its bias
    (blas_gemm.gemm_bias, one pass over the product fewer); smaller programs keep their lines
    (the call's own checks would cost more than the pass)."""
    if not any(n.op == "matmul" and n.nbytes >= blas_gemm.MIN_BYTES for n in nodes):
        return 0
    return fuse(program, with_sums=False)
