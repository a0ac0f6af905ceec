"""How a whole-loop kernel (backends/loop_source.py) reads a body value: array variables and
views of them (getitem, transpose, reshape, broadcast) as index arithmetic on generated source
strings -- no copies; and how it writes a short gate loop's count (loop_count)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from .numba_backend import Unsupported


def strides(shape: tuple) -> list[int]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return out[::-1]


def flat(idx: list[str], shape: tuple) -> str:
    terms = [i if st == 1 else f"{i} * {st}" for i, st, s in zip(idx, strides(shape), shape)]
    return " + ".join(t for t, s in zip(terms, shape) if s != 1) or "0"


def bcast(idx: list[str], shape: tuple, out_shape: tuple) -> list[str]:
    """Indices of an operand of `shape` broadcast to `out_shape` at out index `idx`."""
    lead = len(out_shape) - len(shape)
    return ["0" if s == 1 else idx[lead + j] for j, s in enumerate(shape)]


def reads(v: Val) -> set[str]:
    """The arrays reading v reads."""
    return reads(v.base) if isinstance(v, View) else {v.name}


class Val:
    """How the kernel reads a body value: `at(idx)` a scalar expression, `arr()` an array
    expression of C (or, for `.T`, F) layout, or None when there is none without a copy."""

    def __init__(self, shape: tuple, dtype: str):
        self.shape, self.dtype = tuple(shape), dtype

    def at(self, idx: list[str]) -> str:
        raise NotImplementedError

    def arr(self) -> str | None:
        return None


class Arr(Val):
    """An array variable (`lead`: indices taken first, ["t"] for an xs row); `empty` the index
    of a 0-d value (a 1-element buffer: "0", a 0-d argument: "()")."""

    def __init__(self, name: str, shape: tuple, dtype: str, lead=(), empty: str = "0"):
        super().__init__(shape, dtype)
        self.name, self.lead, self.empty = name, list(lead), empty

    def at(self, idx: list[str]) -> str:
        parts = self.lead + list(idx)
        return f"{self.name}[{', '.join(parts) if parts else self.empty}]"

    def arr(self) -> str | None:
        if not self.shape:
            return None
        return f"{self.name}[{', '.join(self.lead)}]" if self.lead else self.name


class View(Val):
    """A view of `base`: `fn` maps this value's indices to base's; `array` its array
    expression when one exists (a transposed matrix, a reshaped C array)."""

    def __init__(self, base: Val, shape: tuple, fn: Callable, array: str | None = None):
        super().__init__(shape, base.dtype)
        self.base, self.fn, self.array = base, fn, array

    def at(self, idx: list[str]) -> str:
        return self.base.at(self.fn(list(idx)))

    def arr(self) -> str | None:
        return self.array


def getitem_map(index: tuple, in_shape: tuple) -> Callable:
    """Basic indexing (slices, ints, None, Ellipsis) as index arithmetic; anything else
    (advanced or boolean indices) is Unsupported."""
    items = list(index)
    full = ("s", None, None, None)
    n_real = sum(1 for it in items if it is not None and it is not Ellipsis)
    if any(it is Ellipsis for it in items):
        k = next(j for j, it in enumerate(items) if it is Ellipsis)
        items[k : k + 1] = [full] * (len(in_shape) - n_real)
    else:
        items += [full] * (len(in_shape) - n_real)
    plan: list[Any] = []  # per out dim: None (new axis) or (in dim, start, step)
    fixed: dict[int, int] = {}
    d = 0
    for it in items:
        if it is not None and d >= len(in_shape):
            raise Unsupported(f"index {index!r} of shape {in_shape}")
        if it is None:
            plan.append(None)
        elif isinstance(it, slice) or (isinstance(it, tuple) and it and it[0] == "s"):
            sl = it if isinstance(it, slice) else slice(*it[1:])
            start, _stop, step = sl.indices(in_shape[d])
            plan.append((d, start, step))
            d += 1
        elif isinstance(it, (int, np.integer)) and not isinstance(it, (bool, np.bool_)):
            fixed[d] = int(it) % in_shape[d]
            d += 1
        else:
            raise Unsupported(f"index item {it!r}")
    if d != len(in_shape):
        raise Unsupported(f"index {index!r} of shape {in_shape}")

    def fn(idx: list[str]) -> list[str]:
        out = [str(fixed.get(k, "")) for k in range(len(in_shape))]
        for entry, i in zip(plan, idx):
            if entry is not None:
                dim, start, step = entry
                term = i if step == 1 else f"{step} * {i}"
                out[dim] = term if start == 0 else f"({start} + {term})"
        return out

    return fn


def reshape_map(in_shape: tuple, out_shape: tuple) -> Callable:
    if [s for s in in_shape if s != 1] == [s for s in out_shape if s != 1]:
        ins = [k for k, s in enumerate(in_shape) if s != 1]
        outs = [k for k, s in enumerate(out_shape) if s != 1]

        def squeeze(idx: list[str]) -> list[str]:
            out = ["0"] * len(in_shape)
            for a, b in zip(ins, outs):
                out[a] = idx[b]
            return out

        return squeeze
    in_strides = strides(in_shape)

    def general(idx: list[str]) -> list[str]:
        # (the first index needs no `% size`: the flat index is below the size of both shapes;
        # a generated size may be a runtime number, program_source.lift_sizes, and a modulo by
        # one an integer division per element in the innermost loop)
        at = flat(idx, out_shape)
        quotients = [f"({at})" if st == 1 else f"(({at}) // {st})" for st in in_strides]
        return [q if d == 0 else f"{q} % {s}" for d, (q, s) in enumerate(zip(quotients, in_shape))]

    return general


def shifted_layout(attrs: dict, length: str = "length") -> tuple:
    """scan_ir.ys_places' layout as expressions of the kernel's `length` argument (a kernel
    serves every length; an inlined loop gives its own `length`): per ys (start, stride), per
    shifted ys (carry k, initial offset)."""
    body, nc, shifted, reverse = attrs["body"], attrs["n_carry"], attrs["shifted"], attrs["reverse"]
    sizes = [math.prod(o.shape) for o in body.outputs]
    c, ys = sum(sizes[:nc]), sizes[nc:]
    moved = {j for j, _ in shifted}
    width = sum(w for j, w in enumerate(ys) if j not in moved)
    places: list = [None] * len(ys)
    start = c
    for j, w in enumerate(ys):
        if j not in moved:
            places[j] = (str(start), width)
            start += w
    inits, before = [], 0
    for j, k in shifted:
        w = ys[j]
        base = f"({c} + {length} * {width} + ({length} + 1) * {before})"
        places[j] = (base if reverse else f"({base} + {w})", w)
        inits.append((k, f"({base} + {length} * {w})" if reverse else base))
        before += w
    return places, inits


# A loop nest of a kernel's body (LoopSource.flush: a loop kernel's step, a program kernel's
# lines) whose innermost loop has fewer than SHORT[0] iterations and evaluates
# vecmath's exp / tanh / sigmoid runs that loop over `range(opaque(count))` (numba_intrinsics):
# LLVM fully unrolls a short loop of a known count into straight scalar code before its loop
# vectoriser runs (a (1, 5, 5) FastLSTM's sigmoids over its 10 gates ran one at a time), while a
# count it cannot see leaves the loop to the vectoriser. Only where LLVM then vectorises it:
# with the count unknown, behind runtime overlap checks of the loop's arrays -- every stored
# array against every other -- and LLVM gives up past CHECKS of them (its
# -runtime-memory-check-threshold): an LSTM's one cell-update loop writing 7 buffers stays as
# it is (its count known, it was vectorised; hidden, it ran scalar: 1.4x slower). The same
# scalar operations per element either way: the same bits. SHORT[0] = 0: no count hidden
# (tools/ab_gates.py's old arm). BENCHMARKS.md "hgate5".
SHORT = [32]
CHECKS = 8
_VECMATH = re.compile(r"\b[vV][mMdD]_\w")  # (vecmath's calls, or its lines written inline)
_ARRAY = re.compile(r"\b(\w+)\[")
_STORE = re.compile(r"(\w+)\[[^=]*\] [+]?= ")


def loop_count(count: int, body: list[str]) -> str:
    """The count of a body nest's innermost loop of `count` iterations running `body` (its
    lines): `opaque(count)` where the rule above hides it, else the number."""
    if not (count < SHORT[0] and any(_VECMATH.search(line) for line in body)):
        return str(count)
    stores = {m.group(1) for line in body if (m := _STORE.match(line.strip()))}
    loads = {m.group(1) for line in body for m in _ARRAY.finditer(line)} - stores
    checks = len(stores) * (len(stores) - 1) // 2 + len(stores) * len(loads)
    return f"opaque({count})" if checks <= CHECKS else str(count)
