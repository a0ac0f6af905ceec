"""MaskZero's row selects in a translated step loop (backends/step_loop.py; issue 19): the
statements a masked step program (nn/row_select.py: `cell.mask_zero()`, `nn.MaskZero`) makes
besides its kernels -- the zero-row test (the row max of |x|, then `== 0`), the selects
(`where`), the mask saved for the backward as a float and read back as a boolean (`cast`) and
the copy of a selected value into its saved row -- as numba text. Each is exact (a select, a
copy, a cast, a comparison): the same bits as the Python loop's NumPy calls. The row max is
exact too but for which zero or NaN it keeps, so it is translated only where its one use is a
comparison with 0 (the zero-row test), where that cannot show."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..ops.registry import get_op
from .numba_backend import Unsupported

# the row max into a (rows, 1) `out` (NaN-propagating, as np.max); one helper in the module
ROW_MAX = """

@njit(cache=True, nogil=True, error_model='numpy')
def _rowmax(x, out):
    for i0 in range(x.shape[0]):
        m = x[i0, 0]
        for i1 in range(1, x.shape[1]):
            if m != m:
                break
            v = x[i0, i1]
            if v > m or v != v:
                m = v
        out[i0, 0] = m
    return out"""
COPY = re.compile(r"^(\w+)\[\.\.\.\] = (\w+)$")  # (a value copied into a saved row: a ys)
# an array copied into a slice (a concatenation's part, a saved row) as numba_put.put, not
# numba's slice assignment: its error path formats the shapes (unicode code numba types once per
# process, ~5 s, and optimises again in every kernel that assigns a slice, ~0.3-0.5 s)
PUT = (
    "from tapernn.backends.numba_put import put as _put  # "
    + hashlib.sha1((Path(__file__).parent / "numba_put.py").read_bytes()).hexdigest()[:20]
)  # (its text in the step loops' names: numba_put.py's docstring)
_SLICE_SET = re.compile(r"^(\w+)\[(.*(?::|\.\.\.).*)\] = (\w+)$")


def puts(body: list[str]) -> list[str]:
    """`body` (a step loop's lines) with each `x[<slices>] = y` as `_put(x[<slices>], y)`."""

    def put(m: re.Match) -> str:
        return f"_put({m[1] if m[2] == '...' else f'{m[1]}[{m[2]}]'}, {m[3]})"

    return [_SLICE_SET.sub(put, line) for line in body]


_DTYPES = {"b": "np.bool_", "f4": "np.float32", "f8": "np.float64"}


def _kw(args: list[str], defaults: dict) -> tuple[list[str], dict, str | None]:
    """(positional args, keyword values bound in `defaults`, out= name or None)."""
    pos = [a for a in args if "=" not in a]
    kw = dict(a.split("=", 1) for a in args if "=" in a)
    out = kw.pop("out", None)
    if any(k not in defaults for k in kw.values()):
        raise Unsupported("a keyword not bound")
    return pos, {k: defaults[v] for k, v in kw.items()}, None if out in (None, "None") else out


_EMPTY = re.compile(r"\bnp_empty\((\w+), (\w+)\)")


def allocations(args: str, defaults: dict) -> str:
    """A kernel call's arguments with codegen's `np_empty(s, d)` -- the `out` allocated each
    step for a value given no buffer (a masked loop's reverse body) -- as numba's np.empty."""

    def empty(m: re.Match) -> str:
        shape, dtype = defaults.get(m[1]), defaults.get(m[2])
        if defaults.get("np_empty") is not np.empty or not isinstance(shape, tuple):
            raise Unsupported(f"allocation {m[0]}")
        return f"np.empty({tuple(int(v) for v in shape)}, {_dtype(dtype)})"

    return _EMPTY.sub(empty, args)


def _dtype(d) -> str:
    d = np.dtype(d)
    name = _DTYPES.get("b" if d.kind == "b" else f"{d.kind}{d.itemsize}")
    if name is None:
        raise Unsupported(f"cast to {d}")
    return name


def call(out: str, fn: str, args: list[str], defaults: dict, later: list) -> list[str]:
    """The numba lines for `out = fn(args)` when `fn` is the forward of `where`, `cast` or
    `max` (the zero-row test's), or Unsupported; `later`: the statements after it (step_loop's
    parsed (kind, out, fn, args)), to check the row max's one use."""
    if fn not in ("f_where", "f_cast", "f_max") or defaults.get(fn) is not get_op(fn[2:]).forward:
        raise Unsupported(f"call of {fn}")
    pos, kw, dst = _kw(args, defaults)
    if fn == "f_where" and len(pos) == 3 and not kw and dst is None:
        return [f"{out} = np.where({', '.join(pos)})"]
    if fn == "f_cast" and len(pos) == 1 and set(kw) == {"dtype"}:
        if dst is None:
            return [f"{out} = {pos[0]}.astype({_dtype(kw['dtype'])})"]
        _dtype(kw["dtype"])  # (a bool or float target: numba's setitem casts as np.copyto)
        return [f"{dst}[...] = {pos[0]}", f"{out} = {dst}"]
    if (
        fn == "f_max"
        and len(pos) == 1
        and tuple(kw.get("axis", ())) == (1,)
        and _zero_test(out, later, defaults)
    ):
        made = dst or f"np.empty(({pos[0]}.shape[0], 1), {pos[0]}.dtype)"
        return [f"{out} = _rowmax({pos[0]}, {made})" + ("" if kw.get("keepdims") else "[:, 0]")]
    raise Unsupported(f"call of {fn}")


def _zero_test(name: str, later: list, defaults: dict) -> bool:
    """Whether value `name` is read only by `np_equal(name, <a bound 0>)` (and not returned)."""
    word = re.compile(rf"\b{name}\b")
    for kind, _, fn, args in later:
        flat = args[0] + args[1:] if kind == "concat" else args
        if not any(word.search(str(a)) for a in flat):
            continue
        if kind != "call" or fn != "np_equal" or len(args) < 2 or args[0] != name:
            return False
        zero = defaults.get(args[1])
        if not (isinstance(zero, np.ndarray) and zero.ndim == 0 and zero == 0):
            return False
    return True


def index_text(index: Any) -> str:
    """A bound index (ints, slices) as numba text (step_loop's index statements)."""
    if not isinstance(index, tuple):
        index = (index,)
    parts = []
    for i in index:
        if isinstance(i, slice):
            a, b, c = (("" if v is None else str(int(v))) for v in (i.start, i.stop, i.step))
            parts.append(f"{a}:{b}" + (f":{c}" if c else ""))
        elif isinstance(i, (int, np.integer)) and not isinstance(i, bool):
            parts.append(str(int(i)))
        else:
            raise Unsupported(f"index {i!r}")
    return ", ".join(parts) or ":"


def split_args(text: str) -> list[str]:
    """A call's comma-separated arguments (step_loop's statements: names and keywords)."""
    return [a.strip() for a in text.split(",") if a.strip()]
