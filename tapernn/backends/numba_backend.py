"""The numba backend: a fused elementwise group lowered to one @njit function -- one loop nest
over the output, every instruction a scalar expression in registers, no temporaries. Kernels are
keyed by structure (ops, dtypes, broadcast pattern; not sizes), written as modules to a cache
directory so numba's cache=True works across processes, and compiled once per process."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import vecmath
from .background import failure
from .kernel_cache import cache_root, import_written, numba_folders

# bump when the generated source changes meaning (part of every kernel's file name)
SOURCE_VERSION = 6
_DTYPES = {"f": ("float32", "float64"), "b": ("bool",)}
_lock = threading.RLock()  # held while a kernel loads or compiles
# held only to look up or add a kernel: a compile of the caller's thread (plan_kernel) must not
# wait for the worker thread's compile of another kernel (BENCHMARKS.md hcold3)
_registry_lock = threading.Lock()
_kernels: dict[str, Kernel] = {}


# float32 groups with these ops stay on NumPy: without Intel SVML numba calls scalar libm
# logf/powf per element, 4-7x slower than NumPy's SIMD float32 ufuncs. float32 exp, tanh and
# sigmoid are vecmath.py's vectorisable float32 arithmetic instead (libm expf/tanhf, or tanh in
# float64 as before, were 1-3x NumPy's time; these 0.1-0.4x, BENCHMARKS.md issue-19 helem).
SLOW_FLOAT32_OPS = frozenset({"log", "power"})
VECTOR_FLOAT32 = {
    "tanh": vecmath.tanh_lines,
    "exp": vecmath.exp_lines,
    "sigmoid": vecmath.sigmoid_lines,
}
VECTOR_FLOAT64 = vecmath.FLOAT64  # likewise (hf64; fused_lowering.NUMBA_LONE_OPS: lone ones)


def vector_ops(dt: str) -> dict:
    """The vectorisable exp/tanh/sigmoid line makers for dtype name `dt` ({} for others)."""
    return VECTOR_FLOAT32 if dt == "float32" else VECTOR_FLOAT64 if dt == "float64" else {}


@functools.cache
def _svml() -> bool:
    """numba's config.USING_SVML, without importing numba (0.5-1 s) where it is certainly
    False: SVML disabled by its variable, or no libsvml to load (numba/__init__.py)."""
    if "numba" not in sys.modules:
        if os.environ.get("NUMBA_DISABLE_INTEL_SVML", "0") not in ("", "0"):
            return False
        try:
            ctypes.CDLL("libsvml.so")
        except OSError:
            return False
    from numba import config

    return bool(getattr(config, "USING_SVML", False))


def slower_than_numpy(program: tuple) -> str:
    """Why numba would lose on this group ("" when it would not)."""
    slow = {
        op
        for op, _, _, _, dtype in program
        if op in SLOW_FLOAT32_OPS and np.dtype(dtype) == np.float32
    }
    if slow and not _svml():
        return (
            f"kept on NumPy: float32 {'/'.join(sorted(slow))} without SVML is faster as a "
            f"NumPy SIMD ufunc"
        )
    return ""


class Unsupported(Exception):
    """The group has an op or dtype this backend does not lower (the NumPy lowering runs it)."""


def cache_dir() -> Path:
    """kernel_cache.cache_root() ($TAPERNN_KERNEL_CACHE, else ~/.cache/tapernn/numba-kernels);
    below numba's -O3 its subdirectory opt<level> (numba_opt.py: -O0 kernels never land where
    -O3 ones load)."""
    from .numba_opt import below_o3, keyed, opt_level

    base = cache_root()
    if not below_o3():
        return base
    keyed()  # (installed here too: NUMBA_OPT may have changed since numba_setup.setup())
    return base / f"opt{opt_level()}"


def _dtype_name(dtype: Any) -> str:
    dt = np.dtype(dtype)
    if dt.name not in _DTYPES.get(dt.kind, ()):
        raise Unsupported(f"dtype {dt}")
    return dt.name


def _typed(dtype: str, value: int) -> str:
    # typed constants (module globals numba freezes): a Python literal would promote float32
    return f"{'ONE' if value == 1 else 'ZERO'}_{dtype}"


def _scalar(op: str, xs: list[str], attrs: dict, dt: str) -> str:
    """One instruction as a scalar expression over already-cast operands `xs`."""
    if op in ("add", "sub", "mul", "div"):
        sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[op]
        return f"{xs[0]} {sym} {xs[1]}"
    if op == "add_n":
        return " + ".join(xs)
    if op in ("maximum", "minimum"):  # NaN propagates; a tie (-0, +0) gives b: NumPy's zero
        a, b = xs
        cmp = ">" if op == "maximum" else "<"
        return f"{a} if ({a} {cmp} {b} or {a} != {a}) else {b}"
    if op == "relu":
        return f"{xs[0]} if ({xs[0]} > {_typed(dt, 0)} or {xs[0]} != {xs[0]}) else {_typed(dt, 0)}"
    if op == "greater":
        return f"{xs[0]} > {xs[1]}"
    if op == "equal":
        return f"{xs[0]} == {xs[1]}"
    if op == "neg":
        return f"-{xs[0]}"
    if op in ("exp", "log", "tanh", "sqrt", "abs", "sign", "power"):
        return f"np.{op}({', '.join(xs)})"
    if op == "cast":
        return f"({xs[0]} != 0)" if dt == "bool" else f"np.{dt}({xs[0]})"
    raise Unsupported(f"op {op!r}")


# (operands cast to the instruction's dtype where theirs differs)
_CASTS_OPERANDS = ("add", "sub", "mul", "div", "add_n", "maximum", "minimum", "power", "neg")
_CASTS_OPERANDS += ("exp", "log", "tanh", "sqrt", "abs", "sign", "sigmoid", "relu")

_HEADER = (
    '''"""tapernn generated kernel (numba backend); safe to delete."""
import numpy as np
from numba import njit

ONE_float32, ZERO_float32 = np.float32(1.0), np.float32(0.0)
ONE_float64, ZERO_float64 = np.float64(1.0), np.float64(0.0)
ONE_bool, ZERO_bool = True, False
'''
    + vecmath.HEADER
    + """


@njit(cache=True, error_model="numpy", nogil=True)
"""
)


def _sigmoid_lines(j: int | str, x: str, dt: str, vector: bool = True) -> list[str]:
    """sigma(x) into v{j}, exact in both tails: exp(-|a|) never overflows (ops/elementwise.py);
    written out (an inlined helper costs numba an inlining pass per kernel at compile time);
    float32 through vecmath's vectorisable exp (with `vector`; else libm's expf)."""
    if vector and "sigmoid" in vector_ops(dt):
        return vector_ops(dt)["sigmoid"](f"s{j}", x, f"v{j}")
    one, zero = _typed(dt, 1), _typed(dt, 0)
    return [
        f"a{j} = {x}",
        f"e{j} = np.exp(-np.abs(a{j}))",
        f"v{j} = ({one} if a{j} >= {zero} else e{j}) / ({one} + e{j})",
    ]


def _loads(operands: list[tuple[tuple, Any]], out_shape: tuple, rows: bool) -> list[tuple]:
    """Per operand (load expression, dtype name, its row view line or None). With `rows` (2-D
    outputs): an operand whose last axis is not broadcast is read through c_row's C-contiguous
    view of its row (numba_intrinsics)."""
    ndim = len(out_shape)
    idx = [f"i{d}" for d in range(ndim)]
    loads = []
    for k, (shape, dtype) in enumerate(operands):
        lead = ndim - len(shape)
        sub = [
            ("0" if s == 1 and out_shape[lead + j] != 1 else idx[lead + j])
            for j, s in enumerate(shape)
        ]
        if rows and len(shape) == 2 and sub[1] != "0":
            loads.append((f"r{k}[i1]", _dtype_name(dtype), f"r{k} = c_row(x{k}, {sub[0]})"))
        else:
            loads.append((f"x{k}[{', '.join(sub) if sub else '()'}]", _dtype_name(dtype), None))
    return loads


def _body(program: tuple, loads: list[tuple], vector: bool = True) -> list[str]:
    """The group's instructions as scalar lines; the result is in the last line's v{j}.
    `vector`: float32 exp/tanh/sigmoid as vecmath's vectorisable arithmetic (else libm's
    scalar expf/tanhf: a few lines instead of ~15 each, for the 2-D kernels' fallback nest)."""
    lines: list[str] = []
    values: list[tuple[str, str]] = []
    for j, (op, refs, attrs, _shape, dtype) in enumerate(program):
        dt = _dtype_name(dtype)
        ins = [loads[r][:2] if r >= 0 else values[-r - 1] for r in refs]
        casts = op in _CASTS_OPERANDS and dt != "bool"
        xs = [f"np.{dt}({x})" if casts and t != dt else x for x, t in ins]
        if op == "sigmoid":
            lines += _sigmoid_lines(j, xs[0], dt, vector)
        elif vector and op in vector_ops(dt):
            lines += vector_ops(dt)[op](f"t{j}", xs[0], f"v{j}")
        else:
            lines.append(f"v{j} = {_scalar(op, xs, dict(attrs), dt)}")
        values.append((f"v{j}", dt))
    return lines


def _nest(pad: str, ndim: int, body: list[str], row_lines: list[str]) -> list[str]:
    text = []
    for d in range(ndim):
        text.append(f"{pad}for i{d} in range(out.shape[{d}]):")
        pad += "    "
        if d == 0 and row_lines:  # the row views, once per row
            text += [pad + line for line in row_lines]
    return text + [pad + line for line in body]


def kernel_source(
    program: tuple, operands: list[tuple[tuple, Any]], out_shape: tuple, inplace: int | None = None
) -> str:
    """The module text of `program` (ops/fused.py) over operands of these (shape, dtype),
    writing an output of out_shape: sizes enter only as which dimensions broadcast. An operand
    is cast only where its dtype is not the instruction's (every op here keeps the dtype of
    same-dtype operands, as in NumPy): fewer calls to type and lower at compile time. A 2-D
    output gets two loop nests: one over C-contiguous row views (c_row) where every 2-D
    operand's rows are contiguous -- strided gate views included, whose plain loops numba types
    as layout "A" and LLVM does not vectorise (2-7x slower) -- and the plain one otherwise.
    `inplace`: the operand the call site passes as `out` too; the row loop then stores through
    that operand's row view where `out` is the same memory (LLVM vectorises a loop reading and
    writing one row at the same index, not two rows it cannot prove apart: 10x slower)."""
    ndim = len(out_shape)
    idx = [f"i{d}" for d in range(ndim)]
    target = f"out[{', '.join(idx) if idx else '()'}]"
    plain = _loads(operands, out_shape, rows=False)
    # (a 2-D output's plain nest is the rare fallback: scalar libm there, so numba compiles the
    # long vecmath lines once -- 0.5 s less per kernel, BENCHMARKS.md hcold2)
    lines = _body(program, plain, vector=ndim != 2)
    result = f"v{len(program) - 1}"
    text = [f"def kernel({', '.join(f'x{k}' for k in range(len(operands)))}, out):"]
    if ndim == 2:
        loads = _loads(operands, out_shape, rows=True)
        row_lines = [r for _, _, r in loads if r]
        checks = [f"x{k}.strides[1] == x{k}.itemsize" for k, (*_, r) in enumerate(loads) if r]
        checks.append("out.strides[1] == out.itemsize")
        store = "ro"
        if (
            inplace is not None
            and loads[inplace][2]
            and tuple(operands[inplace][0]) == tuple(out_shape)
        ):
            store = f"r{inplace}"
            checks += [
                f"out.ctypes.data == x{inplace}.ctypes.data",
                f"out.strides[0] == x{inplace}.strides[0]",
            ]
        else:
            row_lines.append("ro = c_row(out, i0)")
        text.append(f"    if {' and '.join(checks)}:")
        text += _nest("        ", 2, _body(program, loads) + [f"{store}[i1] = {result}"], row_lines)
        text.append("    else:")
        text += _nest("        ", 2, lines + [f"{target} = {result}"], [])
    else:
        text += _nest("    ", ndim, lines + [f"{target} = {result}"], [])
    text.append("    return out")
    return _HEADER + "\n".join(text) + "\n"


# modules whose code generated kernels import (their header: `from tapernn.backends.
# numba_intrinsics import ...`); numba's disk cache checks only the kernel module's own file, so
# their text is part of every kernel's name: a changed intrinsic never loads old machine code.
# So is whether scipy is installed: numba's matmul calls scipy's BLAS, looked up when a cached
# kernel runs -- a kernel compiled where scipy is, loaded where it is not, aborted the process
# ("Fatal Python error: BLAS wrapper returned with an error"); compiled anew there, it fails
# at compile time and its program runs NumPy, saying so in the compile report
_IMPORTED = ("numba_intrinsics.py",)
_imported_digest: bytes | None = None


def _module_name(source: str) -> str:
    global _imported_digest
    if _imported_digest is None:
        here = Path(__file__).resolve().parent
        blas = b"scipy" if importlib.util.find_spec("scipy") is not None else b"no scipy"
        _imported_digest = hashlib.sha1(
            b"".join((here / f).read_bytes() for f in _IMPORTED) + blas
        ).digest()
    digest = hashlib.sha1(_imported_digest + source.encode()).hexdigest()[:20]
    return f"tapernn_k{SOURCE_VERSION}_{digest}"


def _drop_numba_cache(source: str) -> bool:
    """Remove numba's cache files (index and data) of `source`'s kernel; True if there were
    any. A truncated or corrupt one makes numba's load fail, and the kernel then compiles anew
    (numba writes the new ones whole: temporary file and rename)."""
    dropped = False
    for folder in numba_folders(cache_dir()):  # (__pycache__, or $NUMBA_CACHE_DIR's folder)
        for path in folder.glob(f"{_module_name(source)}.*.nb[ic]"):
            path.unlink(missing_ok=True)
            dropped = True
    return dropped


def _load(source: str) -> Callable:
    """Import the module holding `source` from the cache directory (written once, atomically:
    concurrent processes write the same text to the same name; again when another process's
    prune_cache removed it: kernel_cache.import_written), after the helpers module its kernels
    import (vecmath.HELPERS_SOURCE: once per process)."""
    from .numba_setup import setup

    setup()  # numba's first-use setup, without its scipy import (once per process)
    directory = cache_dir()
    for name, text in (
        (vecmath.HELPERS_MODULE, vecmath.HELPERS_SOURCE),
        (_module_name(source), source),
    ):
        if text is not source and name in sys.modules:
            continue
        module = import_written(directory, name, text.encode())
    return module.kernel


def _warm(handle: Kernel, operands: list[tuple[tuple, Any]], out: tuple[int, Any]) -> None:
    """Compile (or load from numba's cache) the C-contiguous specialisation now, so a kernel
    that does not compile is found at compile time: size-1 operands index only position 0."""
    from .background import type_key

    args = [np.zeros((1,) * len(s), d) for s, d in operands]
    args.append(np.zeros((1,) * out[0], out[1]))
    handle._make(type_key(tuple(args)), False)
    handle.kernel(*args)


class Kernel:
    """One generated kernel (shared by every group of the same structure in every program):
    its module loaded from the cache directory, and the argument types it is compiled for."""

    def __init__(
        self,
        source: str,
        operands: list[tuple[tuple, Any]],
        out: tuple[int, Any],
        inplace: int | None = None,
    ):
        self.source, self.operands, self.out = source, operands, out
        self.kernel: Callable | None = None
        self.error = ""  # why it could not be made (its groups then run on NumPy)
        self.types: set[tuple] = set()  # general() of the compiled signatures' type_keys
        # a 2-D kernel reads rows through c_row whatever its arrays' layout: ONE specialisation
        # (arrays typed "A", inputs read-only) serves every layout and write flag -- each was
        # one more cold compile (~0.5 s; FastLSTM (32,50,256): 9 -> 8 specialisations of 8
        # kernels) -- and numba's dispatcher, its compiling disabled, converts a call's arrays
        # to it (same call cost)
        self.one_signature = out[0] == 2
        self.inplace = inplace  # (the operand written through: stays writable)

    def general(self, key: tuple | None) -> tuple | None:
        """The signature `key` (background.type_key) is compiled as."""
        if key is None or not self.one_signature:
            return key
        last = len(key) - 1
        return tuple(
            (dt, nd, "A" if nd else layout, ro or (k < last and k != self.inplace))
            for k, (dt, nd, layout, ro) in enumerate(key)
        )

    def planned_key(self) -> tuple | None:
        """The signature its call sites will compile, when known before any call: a 2-D
        kernel's one signature (general() of any layout); else None."""
        if not self.one_signature:
            return None
        key = [(np.dtype(d).str, len(s), "C", False) for s, d in self.operands]
        key.append((np.dtype(self.out[1]).str, self.out[0], "C", False))
        return self.general(tuple(key))

    def has(self, key: tuple | None) -> bool:
        return self.kernel is not None and (key is None or self.general(key) in self.types)

    def child_recipe(self, key: tuple | None) -> tuple:
        """(module, function, cache folder, this handle's (module, class, arguments)): what a
        compile child builds to run `prepare(key)` (compile_child.offered)."""
        args = (self.source, self.operands, self.out, self.inplace)
        return _module_name(self.source), "kernel", cache_dir(), (__name__, "Kernel", args)

    def prepare(self, key: tuple | None = None, warm: bool = False) -> Callable | None:
        """Load the kernel (and compile it for `key`, or for C-contiguous arrays with `warm`);
        None when that failed (self.error says why)."""
        with _lock:
            if self.error:
                return None
            for attempt in (1, 2):
                try:
                    return self._make(key, warm)
                except Exception as e:  # noqa: BLE001 -- any failure: its groups run on NumPy
                    why = f"numba failed: {failure(e)}"
                # once more without numba's cache files, if any (a corrupt one fails the load)
                self.kernel, self.types = None, set()
                if attempt == 2 or not _drop_numba_cache(self.source):
                    break
            self.error = why
            return None

    def _make(self, key: tuple | None, warm: bool) -> Callable:
        if self.kernel is None:
            self.kernel = _load(self.source)
        if warm:
            _warm(self, self.operands, self.out)
        key = self.general(key)
        if key is not None and key not in self.types:
            from .background import numba_signature

            self.kernel.disable_compile(False)
            try:
                self.kernel.compile(numba_signature(key))
            finally:  # (compiled only here, for general() types: calls convert)
                self.kernel.disable_compile(self.one_signature and bool(self.kernel.signatures))
            self.types.add(key)
        return self.kernel


def _source_for(
    program: tuple,
    operands: list[tuple[tuple, Any]],
    out_shape: tuple,
    memo: dict | None,
    inplace: int | None = None,
) -> tuple[str, str]:
    """(kernel_source, "") or ("", why numba does not lower the group), kept in `memo` (one
    compile's: a program's groups repeat the same few structures, one per timestep)."""
    key = None
    if memo is not None:
        shapes = tuple((tuple(s), np.dtype(d).str) for s, d in operands)
        key = (program, shapes, tuple(out_shape), inplace)
        try:
            known = memo.get(key)
        except TypeError:  # an unhashable attribute: not remembered
            key, known = None, None
        if known is not None:
            return known
    slower = slower_than_numpy(program)
    if slower:
        made = "", slower
    else:
        try:
            made = kernel_source(program, operands, out_shape, inplace), ""
        except Unsupported as e:
            made = "", f"unsupported: {e}"
    if key is not None:
        memo[key] = made
    return made


def plan_kernel(
    program: tuple,
    operands: list[tuple[tuple, Any]],
    out_shape: tuple,
    out_dtype: Any,
    background: bool = False,
    memo: dict | None = None,
    inplace: int | None = None,
) -> tuple[Kernel | None, str]:
    """(kernel, "") or (None, why not): the NumPy lowering then runs the group. Without
    `background` the kernel's module is loaded before this returns (numba compiles it at a call
    site's first call, for the types that call passes); with it this returns at once, and the
    group's call sites have the worker thread load and compile it (backends/background). `memo`:
    a dict kept for one compile (saves re-deriving the source of a repeated group); `inplace`:
    the operand its call sites also pass as `out` (kernel_source)."""
    source, why = _source_for(program, operands, out_shape, memo, inplace)
    if not source:
        return None, why
    with _registry_lock:
        handle = _kernels.get(source)
        if handle is None:
            out = (len(out_shape), out_dtype)
            handle = _kernels[source] = Kernel(source, operands, out, inplace)
    if background:
        return (None, handle.error) if handle.error else (handle, "")
    if handle.prepare() is None:  # loaded now; compiled at the first call, for its types
        return None, handle.error
    return handle, ""


def get_kernel(
    program: tuple, operands: list[tuple[tuple, Any]], out_shape: tuple, out_dtype: Any
) -> tuple[Callable | None, str]:
    """(compiled kernel, "") or (None, why not), compiled (for C-contiguous arrays) before this
    returns."""
    handle, why = plan_kernel(program, operands, out_shape, out_dtype)
    if handle is None:
        return None, why
    return (None, handle.error) if handle.prepare(warm=True) is None else (handle.kernel, "")
