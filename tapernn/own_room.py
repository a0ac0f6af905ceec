"""A time-batched GEMM written into a fresh slab runs the packed kernel, its panels in the slab's
still unwritten bytes (issue 19, BENCHMARKS.md "hgemm3"; PlanOptions.gemm_in_slab): in a program
whose calls own both cores (own_threads.py), the lines

    SLAB = keepK(S, D)            (or np_empty: an array allocated in this call)
    O = SLAB[I].reshape(R)        (or O = SLAB[I])
    X = np_matmul(A, B, out=O)    (or np_matmul_bias(A, B, C, S2, out=O): own_bias.py)

-- the input projection computed into its rows of a rolled loop's slab, as codegen writes it,
with no other line naming SLAB or O before the GEMM (not a projection narrower than the
loop's batch rows, GRU's: regions places it as a strided window, `O = SLAB[I].reshape(R)[J]`,
which the packed kernel's C output cannot be) -- become one call of a `RoomGemm`
(`X = np_matmul_roomN(A, B, C, S2, SLAB, out=O)`): W = B packed into panels (packed.py) in
bytes of SLAB outside O, the two halves of its rows through the packed kernel at once (the
caller and own_threads' worker: each packs half of the panels, both wait for the other, then
each computes its rows and adds its rows' bias). At the GEMM nothing has been written to SLAB in
this call but O (the rule above), and a program never reads bytes of an array allocated in the
call before it writes them (a `keep` array is the previous call's, stale) -- so the panels
there are never read by anything but the GEMM: no memory beyond what the report counts.

Why: on AMD Zen 4 each half of OpenBLAS's GEMM at one thread runs the projection at ~93 GF/s a
core, the packed microkernel over pre-packed panels at ~100-107 (thread CPU, BENCHMARKS.md
"hgemm3"); the panels need memory the report counts, which the unwritten rows of the loop's own
slab (its h and c blocks) are. Only on AMD's CPUs (`VENDORS`): an Intel Xeon's OpenBLAS halves are
faster than the packed ones. The bits differ from OpenBLAS's (another summation order) but are
fixed for a configuration: which call runs which path is fixed by the call count
(background.py's protocol, as PackedSite), never by timing. Line for line (the program's line ->
node map stays true). float32 only by default (`DTYPES`): at float64 the packed kernel ran the
projection 2.6 % slower than OpenBLAS; and from a depth of MIN_DEPTH (at K = 256 packing the
panels every call cost what the kernel saved: the (32, 50, 256) step is unchanged)."""

from __future__ import annotations

import re
import threading
from functools import partial
from typing import Any

import numpy as np

from . import own_threads
from .backends import background, packed
from .own_bias import refit

DTYPES = {np.dtype(np.float32)}  # (tests add float64)
MIN_ROWS = 64  # rows of a below which OpenBLAS runs (too few row blocks to split)
# depth (K: a's columns) below which OpenBLAS runs: at K = 256 the per-call pack of the panels
# cost what the kernel saved ((32, 50, 256) f32 projections: FastLSTM -1 %, LSTM -1.7 %, GRU
# +2.8 % process CPU of the line, load 15); at K = 512 the line took 12.6 % less (BENCHMARKS.md)
MIN_DEPTH = 512
MR = 8  # (a multiple of packed_kernels.MR, 8 / 4: the caller's half ends at a whole row block)
# the packed kernels (packed.isa) this path runs: AVX-512's ("hgemm3"). Not AVX2's: on Zen 3 the
# 4 x 3 kernel ran a (800, 512, 2048) f32 half 1.03x OpenBLAS's 1-thread time before its panels
# are even packed (f64 1.01x; BENCHMARKS.md "havx2")
KINDS = {"avx512"}
# ... and on these CPUs ((vendor_id, cpu family) of /proc/cpuinfo): AMD's family 25 (Zen 3 / Zen
# 4; with KINDS' AVX-512: Zen 4) runs a 512-bit FMA as two 256-bit halves, where OpenBLAS's
# AVX-512 (SkylakeX) kernels ran the projection's half at ~93 GF/s a thread and the packed kernel
# at 100-107 ("hgemm3"). An Intel Xeon's two full 512-bit FMA units run OpenBLAS's kernels at
# 144-158 GF/s, the packed kernel at 106-109: there the packed projection took 13 % more CPU in
# the step (BENCHMARKS.md "hrestI"). Zen 5 (family 26) has full 512-bit units too: not measured,
# OpenBLAS's halves. PAYS[0]: None = read at the first call; tests force True (conftest)
VENDORS = {("AuthenticAMD", 25)}
PAYS: list[bool | None] = [None]
RAN = [0]  # GEMMs run packed with panels in a slab so far (tests: the path ran)
POISON = [False]  # (tests) fill the slab outside O with NaN first: nothing may read it later
FUSED = [0]  # lines rewritten so far

_HEAD = re.compile(r"^def (\w+)\((.*), \*, (.*)\):$")
_ALLOC = re.compile(r"^    (\w+) = (keep\d+|np_empty)\((\w+), (\w+)\)$")
_VIEW = re.compile(r"^    (\w+) = (\w+)\[(\w+)\](?:\.reshape\((\w+)\))?$")
_MM = re.compile(r"^    (\w+) = np_matmul\((\w+), (\w+), out=(\w+)\)$")
_MM_BIAS = re.compile(r"^    (\w+) = np_matmul_bias\((\w+), (\w+), (\w+), (\w+), out=(\w+)\)$")


def _names(line: str) -> set[str]:
    return set(re.findall(r"\b[A-Za-z_]\w*\b", line))


def rewrite(source: str) -> tuple[str, int]:
    """(`source` with each GEMM into a fresh slab (the module docstring) made a RoomGemm
    call `np_matmul_roomN`, how many)."""
    lines = source.split("\n")
    count = 0
    for i, line in enumerate(lines):
        alloc = _ALLOC.match(line)
        if alloc is None:
            continue
        slab = alloc.group(1)
        view = None
        for j in range(i + 1, len(lines)):  # the next line naming the slab: O's view
            if slab in _names(lines[j]):
                view = j
                break
        m = _VIEW.match(lines[view]) if view is not None else None
        if m is None or m.group(2) != slab:
            continue
        o = m.group(1)
        gemm = None
        for j in range(view + 1, len(lines)):  # the next line naming the slab or O
            if {slab, o} & _names(lines[j]):
                gemm = j
                break
        if gemm is None:
            continue
        mm, mb = _MM.match(lines[gemm]), _MM_BIAS.match(lines[gemm])
        if mm is not None and mm.group(4) == o:
            x, a, b = mm.group(1), mm.group(2), mm.group(3)
            bias = shape = "None"
        elif mb is not None and mb.group(6) == o:
            x, a, b, bias, shape = mb.groups()[:5]
        else:
            continue
        if {slab, o} & {a, b, bias, shape}:
            continue
        name = f"np_matmul_room{count}"
        lines[gemm] = f"    {x} = {name}({a}, {b}, {bias}, {shape}, {slab}, out={o})"
        count += 1
    if count:
        head = _HEAD.match(lines[0])
        if head is None:
            return source, 0
        extra = "".join(f", np_matmul_room{k}" for k in range(count))
        lines[0] = f"def {head.group(1)}({head.group(2)}, *, {head.group(3)}{extra}):"
    return "\n".join(lines), count


def fuse(program: Any) -> int:
    """Rewrite `program` (codegen.Program, top level, owned: np_matmul bound to
    own_threads.matmul): its function made again from the rewritten source, same bound values
    plus one RoomGemm per rewritten line. Returns how many lines (0: unchanged)."""
    source, count = rewrite(program.source)
    if not count:
        return 0
    refit(program, source, {f"np_matmul_room{k}": RoomGemm() for k in range(count)})
    FUSED[0] += count
    return count


def _fallback(a, b, bias, shape, out):
    if bias is None:
        return own_threads.matmul(a, b, out=out)
    return own_threads.matmul_bias(a, b, bias, shape, out=out)


def _poison(slab: np.ndarray, out: np.ndarray) -> None:
    lo = (_address(out) - _address(slab)) // slab.dtype.itemsize
    slab[:lo] = np.nan
    slab[lo + out.size :] = np.nan


def _address(x: np.ndarray) -> int:
    return x.__array_interface__["data"][0]


def panels_in(room: np.ndarray, out: np.ndarray, need: int) -> np.ndarray | None:
    """`need` elements of the 1-D C array `room` outside `out` (a C view of room's elements):
    before it, else after it (from a 64-byte boundary); None if neither has room."""
    size = room.dtype.itemsize
    lo = (_address(out) - _address(room)) // size
    hi = lo + out.size
    if lo < 0 or hi > room.size or (_address(out) - _address(room)) % size:
        return None
    if need <= lo:
        return room[:need]
    start = hi + (-(_address(room) + hi * size) % 64) // size
    if start + need <= room.size:
        return room[start : start + need]
    return None


def pays() -> bool:
    """Whether this CPU is one of VENDORS (read once into PAYS[0])."""
    if PAYS[0] is None:
        PAYS[0] = vendor() in VENDORS
    return PAYS[0]


def vendor(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, int]:
    """(vendor_id, cpu family) of the first CPU in `cpuinfo` (("", 0) when unknown: OpenBLAS's
    halves run)."""
    try:
        fields = packed.first_cpu(cpuinfo)
    except OSError:
        return "", 0
    family = fields.get("cpu family", "")
    return fields.get("vendor_id", ""), int(family) if family.isdigit() else 0


class RoomGemm:
    """One rewritten GEMM line: `(a, b, bias, shape, slab, out)` -> out = a @ b (+ bias over
    `shape`), the module docstring's packed halves when the call allows them (owned, on the
    caller's thread, the kernel taken, float dtypes of DTYPES, C operands and out, room in the
    slab), else what the line was (own_threads.matmul / matmul_bias)."""

    __slots__ = ("calls", "kernel", "key", "ready")

    def __init__(self) -> None:
        self.calls = 0
        self.kernel: Any = None
        self.key: tuple | None = None
        self.ready: threading.Event | None = None

    def _advance(self, dtype: np.dtype) -> None:
        """PackedSite's call-count protocol: the kernel is taken at the program's switch call
        with background compilation, else at the first call."""
        self.calls += 1
        if self.calls == 1 and (packed.isa() not in KINDS or not pays()):
            return  # (OpenBLAS's halves for good: KINDS, VENDORS)
        if self.calls == 1:
            self.key = ((dtype.str,),)
            if not background.enabled():
                packed.handle().prepare(self.key)
                self._take()
            else:
                self.ready = background.request(packed.handle(), self.key)
        elif self.ready is not None and background.due(self.calls):
            self.ready.wait()
            self.ready = None
            self._take()

    def _take(self) -> None:
        if packed.handle().has(self.key):
            self.kernel = packed.handle().kernel

    def __call__(self, a, b, bias, shape, slab, out=None):
        if (
            not own_threads._state.depth
            or threading.get_ident() in own_threads.worker_ident
            or getattr(a, "ndim", 0) != 2
            or getattr(b, "ndim", 0) != 2
            or a.dtype not in DTYPES
        ):
            return _fallback(a, b, bias, shape, out)
        if self.kernel is None:
            self._advance(a.dtype)
            if self.kernel is None:
                return _fallback(a, b, bias, shape, out)
        done = self._packed(a, b, bias, slab, out)
        return done if done is not None else _fallback(a, b, bias, shape, out)

    def _packed(self, a, b, bias, slab, out):
        m, k = a.shape
        n = b.shape[1]
        dt = a.dtype
        if (
            b.shape[0] != k
            or b.dtype != dt
            or out is None
            or out.shape != (m, n)
            or out.dtype != dt
            or not (a.flags.c_contiguous and out.flags.c_contiguous)
            or m < MIN_ROWS
            or k < MIN_DEPTH
            or 2.0 * m * k * n < own_threads.MIN_FLOPS
            or getattr(slab, "ndim", 0) != 1
            or slab.dtype != dt
            or not slab.flags.c_contiguous
        ):
            return None
        row = None
        if bias is not None:
            if getattr(bias, "ndim", 0) < 1 or bias.size != n or bias.dtype != dt:
                return None
            row = bias.reshape(n)
        nr = packed.width_of(self.kernel, dt)  # (its instruction set's panels)
        npan = -(-n // nr)
        flat = panels_in(slab, out, npan * k * nr)
        if flat is None:
            return None
        if npan < 2:
            return None
        panels = flat.reshape(npan, k, nr)
        if any(np.may_share_memory(panels, v) for v in (a, b, row) if v is not None):
            return None
        if any(np.may_share_memory(out, v) for v in (a, b, row) if v is not None):
            return None
        if POISON[0] and not any(
            np.may_share_memory(slab, v) for v in (a, b, row) if v is not None
        ):
            _poison(slab, out)
        kernel = self.kernel
        h = min(m, -(-(m - m // 2) // MR) * MR)
        cut = npan // 2

        def pack(pans):  # (a side's half of the panels)
            packed.pack_panels(b[:, pans.start * nr : pans.stop * nr], panels[pans], nr)

        def gemm(rows):  # (a side's half of the rows, once both halves of the panels exist)
            kernel(a[rows], panels, out[rows])
            if row is not None:
                np.add(out[rows], row, out=out[rows])

        own_threads.both_after(
            (partial(pack, slice(0, cut)), partial(pack, slice(cut, npan))),
            (partial(gemm, slice(0, h)), partial(gemm, slice(h, m))),
        )
        RAN[0] += 1
        return out
