"""A one-thread GEMM for the halves of an owned call's time-batched GEMMs on an AVX-512 CPU (issue
19, BENCHMARKS.md "hbig", "hnblk"): out = a @ b, or bias + a @ b, BLIS-style over packed_kernels'
microkernel (MR = 8 rows of `a` broadcast x TV = 3 vectors of a packed panel of b, 24 zmm FMA
chains over the K loop). b is packed one K block (`k_depth`: OpenBLAS's, <= 448 rows) x N block
(nt tiles: `block_tiles`, in L2) at a time into panels of one tile each -- TV vectors, or 2 for a
row's last 2 or 4 vectors (16 chains, not 8: `_tile_width`), a panel row every NR = TV lanes --
and `a` k-major (`_pack_a`): MC rows right before they run where b's K block is one N block,
else a chunk of ROWS rows once for all N blocks; then per row block of `a` (its K block in L1)
every panel of the N block (from L2), the next tile's rows of `out` prefetched for writing. The first K block's chains (from 0) are stored (with a bias: added to
it); a later block's, from 0 too, computed into a tile and added to out (one rounding each:
`make_add`) -- OpenBLAS's order with its K blocks (beta = 0; with a bias, beta = 1 onto the
bias copied into C), so where its block depth and its kernels' order are these, the bits are
its own (blas_twin.py checks that per shape before using this). The N blocks change no
element's sums. Measured one thread against OpenBLAS 0.3.31 (SkylakeX kernels) and torch.mm:
tools/own_gemm_ab.py (the loop orders tried: tools/gemm_blis_probe.py). Layouts: `a` with rows
or columns contiguous (a transposed view: dW's dG.T), b too (the projection's W.T), out C;
`fits` says which. Imported only once numba is, from a copy in the kernel cache (blas_twin.kernels)."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic
from numba.np.arrayobj import make_array

from tapernn.backends.packed import _kernel_module

# (packed_kernels' AVX-512 copy in the kernel cache: this module is imported from a copy there
# too, blas_twin.kernels, so its imports are absolute)
_pk = _kernel_module("avx512")
MR, NEAR, VEC_BITS, _vector_type = _pk.MR, _pk.NEAR, _pk.VEC_BITS, _pk._vector_type

TV = 3  # vectors a tile (8 x 3: 24 of the 32 zmm)
MC = 64  # rows of `a` packed at a time (a transposed view's k rows read 4 lines at a time)
ROWS = 1024  # (rows of `a` a chunk: with N blocks each chunk's K block is packed once for all)
ALIGN = 16  # (elements: each part of the work buffer starts on a cache line, f32 and f64)

_micro = _pk.make_microkernel(MR, TV, VEC_BITS, False, 0, NEAR)
_transpose = _pk.make_transpose(MR, VEC_BITS)
_transpose_b = _pk.make_transpose(0, VEC_BITS)  # (lanes x lanes: a transposed b's panels)


def make_copy(vectors: int, elems: int = 0):
    """copy(src, row, col, dst, d_off): dst[d_off:] = src[row, col:] for `vectors` VEC_BITS
    vectors of src's dtype (or, with `elems`, one vector of that many elements); src 2-D with
    its rows contiguous (any row stride), dst C."""

    @intrinsic
    def copy(typingctx, src, row, col, dst, d_off):
        if not (isinstance(src, types.Array) and src.ndim == 2 and isinstance(dst, types.Array)):
            return None

        def codegen(context, builder, signature, args):
            tys = signature.args
            arr = make_array(tys[0])(context, builder, args[0])
            out = make_array(tys[3])(context, builder, args[3]).data
            r, c, d0 = (context.cast(builder, args[j], tys[j], types.intp) for j in (1, 2, 4))
            scal, lanes, vty = _vector_type(context, tys[0].dtype, VEC_BITS)
            esize = context.get_abi_sizeof(scal)
            if elems:
                vty, lanes = ir.VectorType(scal, elems), elems
            i64 = ir.IntType(64)
            stride = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
            at = builder.add(builder.mul(r, stride), builder.mul(c, ir.Constant(i64, esize)))
            base = builder.bitcast(arr.data, cgutils.voidptr_t)
            for v in range(max(vectors, 1)):
                step = ir.Constant(i64, v * lanes)
                src_at = builder.add(at, builder.mul(step, ir.Constant(i64, esize)))
                sp = builder.bitcast(builder.gep(base, [src_at]), vty.as_pointer())
                dp = builder.gep(out, [builder.add(d0, step)], inbounds=True)
                dp = builder.bitcast(dp, vty.as_pointer())
                builder.store(builder.load(sp, align=esize), dp, align=esize)
            return context.get_dummy_value()

        return types.void(src, row, col, dst, d_off), codegen

    return copy


_copy3, _copy2, _copy1 = make_copy(3), make_copy(2), make_copy(1)


def make_add(vectors: int):
    """add(tile, c, c_off, ldc, src, s_off, s_ld): for the MR rows i of the C array `tile` (rows
    of TV vectors), c[c_off + i * ldc:] = src[s_off + i * s_ld:] + its first `vectors` vectors
    (one rounding each): src = c, s_off = c_off, s_ld = ldc adds onto c (OpenBLAS's later K
    block, or any block with beta = 1); a bias row (s_ld 0) gives bias + the first block, the
    bits of the bias copied into c and the block added (commutative, one rounding)."""

    @intrinsic
    def add(typingctx, tile, c, c_off, ldc, src, s_off, s_ld):
        if not all(isinstance(x, types.Array) for x in (tile, c, src)):
            return None

        def codegen(context, builder, signature, args):
            tys = signature.args
            t = make_array(tys[0])(context, builder, args[0]).data
            cp = make_array(tys[1])(context, builder, args[1]).data
            sp = make_array(tys[4])(context, builder, args[4]).data
            c0, ld, s0, sld = (
                context.cast(builder, args[j], tys[j], types.intp) for j in (2, 3, 5, 6)
            )
            scal, lanes, vty = _vector_type(context, tys[0].dtype, VEC_BITS)
            esize = context.get_abi_sizeof(scal)
            i64 = ir.IntType(64)

            def vptr(base, at):
                return builder.bitcast(builder.gep(base, [at], inbounds=True), vty.as_pointer())

            for i in range(MR):
                row = builder.add(c0, builder.mul(ld, ir.Constant(i64, i)))
                from_row = builder.add(s0, builder.mul(sld, ir.Constant(i64, i)))
                for v in range(vectors):
                    step = ir.Constant(i64, v * lanes)
                    to = vptr(cp, builder.add(row, step))
                    base = vptr(sp, builder.add(from_row, step))
                    mine = vptr(t, ir.Constant(i64, (i * TV + v) * lanes))
                    total = builder.fadd(
                        builder.load(base, align=esize), builder.load(mine, align=esize)
                    )
                    builder.store(total, to, align=esize)
            return context.get_dummy_value()

        return types.void(tile, c, c_off, ldc, src, s_off, s_ld), codegen

    return add


_add3, _add2, _add1 = make_add(3), make_add(2), make_add(1)
_copy_rows = make_copy(0, MR)  # (MR elements: a k row of a transposed view's row block)


@intrinsic
def _prefetch_w(typingctx, arr, off):
    """Prefetch for writing, into L1, the line of the C array `arr` holding element `off`."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, args):
        data = make_array(signature.args[0])(context, builder, args[0]).data
        i = context.cast(builder, args[1], signature.args[1], types.intp)
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t] + [ir.IntType(32)] * 3),
            "llvm.prefetch.p0i8",
        )
        line = builder.bitcast(builder.gep(data, [i]), cgutils.voidptr_t)  # (never faults)
        builder.call(fn, [line] + [ir.Constant(ir.IntType(32), f) for f in (1, 3, 1)])
        return context.get_dummy_value()

    return types.void(arr, off), codegen


def fits(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
    """Whether `gemm` takes these operands: 2-D float32 or float64 alike, a's and b's rows or
    columns contiguous, out C, shapes agreeing, out apart from a and b."""
    if not all(isinstance(x, np.ndarray) and x.ndim == 2 for x in (a, b, out)):
        return False
    dt = out.dtype
    if dt not in (np.float32, np.float64) or a.dtype != dt or b.dtype != dt:
        return False
    m, k = a.shape
    if b.shape[0] != k or out.shape != (m, b.shape[1]) or not out.flags.c_contiguous:
        return False
    size = dt.itemsize
    if not (m and k and b.shape[1]):  # (nothing to read: out = 0 or nothing)
        return True
    if not (a.strides[1] == size or a.strides[0] == size):
        return False
    if not (b.strides[1] == size or b.strides[0] == size):
        return False
    return not (np.may_share_memory(out, a) or np.may_share_memory(out, b))


def work_size(m: int, k: int, n: int, itemsize: int, q: int, nt: int) -> int:
    """Elements of `gemm`'s work buffer: b's K block x N block of panels (nt tiles at most), MC
    packed rows of `a`, a tile."""
    kc = max(min(k, q), 1)
    nr = TV * VEC_BITS // (8 * itemsize)
    tiles = _tiles(n, itemsize)
    rows = _a_rows(m, nt < tiles)
    return max(min(tiles, nt), 1) * kc * nr + rows * kc + MR * nr + 3 * ALIGN


@njit(cache=True, nogil=True)
def _a_rows(m, once):
    """Rows of `a` packed at a time: a row chunk's (ROWS at most) where N blocks share them
    (`once`), else MC."""
    return min(m, ROWS) + MR if once else MC


def block_tiles(k: int, n: int, itemsize: int, q: int, panel_bytes: int) -> int:
    """Tiles an N block holds (`gemm`'s nt): b's K block (q rows at most) of n columns in as few
    N blocks as keep each at most `panel_bytes` (by columns), its tiles spread evenly over them."""
    kc = max(min(k, q), 1)
    blocks = max(-(-kc * n * itemsize // panel_bytes), 1)
    return max(-(-_tiles(n, itemsize) // blocks), 1)


@njit(cache=True, nogil=True)
def _tiles(n, itemsize):
    """Tiles (panels) across n columns: `_tile_width`'s walk."""
    left = -(-n // (VEC_BITS // (8 * itemsize)))
    count = 0
    while left > 0:
        left -= _tile_width(left)
        count += 1
    return count


@njit(cache=True, nogil=True)
def _tile_width(left):
    """Vectors of the next tile with `left` vectors to go: TV, but 2 for the last 2 or 4 (two
    tiles of 2: 16 FMA chains each, where a tile of 1 has 8 -- fewer than 2 ports x 4 cycles of
    latency hide)."""
    if left == 2 or left == 4:
        return 2
    return min(TV, left)


@njit(cache=True, nogil=True)
def k_depth(left, q, unroll):
    """The depth of the next K block with `left` of a's columns to go: OpenBLAS's
    (driver/level3.c): q, but all of them below 2 q -- in two near halves (the first a multiple
    of `unroll`) above q."""
    if left >= 2 * q:
        return q
    if left > q:
        return (left // 2 + unroll - 1) // unroll * unroll
    return left


@njit(cache=True, nogil=True)
def _pack_b(b, k0, kk, work, nr, c0, c1):
    """b[k0:k0 + kk, c0:c1] (c0 a tile's first column, c1 a later tile's or n) into panels: the
    block's tile t's kk rows from work[t * kk * nr], row r at + r * nr (its tile's vectors;
    past b's last column zero)."""
    n = b.shape[1]
    lanes = nr // TV
    nv = -(-n // lanes)
    col, t = c0, 0
    while col < c1:
        tw = _tile_width(nv - col // lanes)
        base = t * kk * nr
        if b.strides[1] != b.itemsize:  # (b's columns contiguous: a transposed view)
            _pack_b_columns(b.T, k0, kk, work, nr, col, tw * lanes, base)
        elif col + tw * lanes <= n:
            for r in range(kk):
                if tw == 3:
                    _copy3(b, k0 + r, col, work, base + r * nr)
                elif tw == 2:
                    _copy2(b, k0 + r, col, work, base + r * nr)
                else:
                    _copy1(b, k0 + r, col, work, base + r * nr)
        else:
            for r in range(kk):
                for c in range(tw * lanes):
                    at = col + c
                    work[base + r * nr + c] = b[k0 + r, at] if at < n else 0
        col += tw * lanes
        t += 1


@njit(cache=True, nogil=True)
def _pack_b_columns(bt, k0, kk, work, nr, col, width, base):
    """One tile's panel (`width` columns from `col`; rows k0..k0 + kk) from b's transpose `bt`
    (rows contiguous): lanes x lanes blocks by `_transpose_b` (a k row of lanes columns each
    store), the rest element by element, past b's last column zero."""
    n = bt.shape[0]
    lanes = nr // TV
    whole = min(width, n - col) // lanes * lanes
    kv = kk // lanes * lanes
    for g in range(0, whole, lanes):
        for p in range(0, kv, lanes):
            _transpose_b(bt, col + g, k0 + p, work, base + p * nr + g, nr)
    for r in range(kv, kk):
        for c in range(whole):
            work[base + r * nr + c] = bt[col + c, k0 + r]
    for r in range(kk):
        for c in range(whole, width):
            at = col + c
            work[base + r * nr + c] = bt[at, k0 + r] if at < n else 0


@njit(cache=True, nogil=True)
def _pack_a(a, i0, m1, k0, kk, work, w0):
    """Rows i0..m1 of a's columns k0..k0 + kk, k-major by row block: element (i, p) at work[w0 +
    (i - i0) // MR * MR * kk + p * MR + (i - i0) % MR], a last partial block zero-padded. Row
    blocks of a's contiguous rows by `_transpose`; a transposed view's k row by k row."""
    lanes = VEC_BITS // (8 * a.itemsize)
    full = i0 + (m1 - i0) // MR * MR
    if a.strides[1] == a.itemsize:
        kv = kk // lanes * lanes
        for i in range(i0, full, MR):
            at = w0 + (i - i0) * kk
            for p in range(0, kv, lanes):
                _transpose(a, i, k0 + p, work, at + p * MR, lanes)
            for p in range(kv, kk):
                for r in range(MR):
                    work[at + p * MR + r] = a[i + r, k0 + p]
    else:
        at = a.T
        for p in range(kk):
            for i in range(i0, full, MR):
                _copy_rows(at, k0 + p, i, work, w0 + (i - i0) * kk + p * MR)
    if full < m1:
        base = w0 + (full - i0) * kk
        for p in range(kk):
            for r in range(MR):
                work[base + p * MR + r] = a[full + r, k0 + p] if full + r < m1 else 0


@njit(cache=True, nogil=True, inline="always")
def _call(work, a0, base, lanes, tw, flag, c, c0, ldc, kk):
    """The microkernel on one tile of tw vectors (its p_off typed per width)."""
    if tw == 3:
        offs3 = (base, base + lanes, base + 2 * lanes, 0, 0, 0, flag)
        _micro(work, a0, work, offs3, c, c0, ldc, kk)
    elif tw == 2:
        _micro(work, a0, work, (base, base + lanes, 0, 0, flag), c, c0, ldc, kk)
    else:
        _micro(work, a0, work, (base, 0, flag), c, c0, ldc, kk)


@njit(cache=True, nogil=True)
def gemm(a, b, out, work, q, unroll, nt, bias):
    """out = a @ b, or with `bias` (1-D, n; empty: none) out = bias + a @ b (the module
    docstring; `fits` holds; work: 1-D C, >= work_size elements), in `k_depth`'s K blocks (q,
    unroll) and N blocks of nt tiles (b's panels in L2): each block's sums chains from 0, the
    first stored -- or with a bias added to it, OpenBLAS's beta = 1 onto the bias copied into
    out -- each later one added to out (one rounding): OpenBLAS's order, its bits where its q
    and unroll are these (`blas_twin`). The N blocks change no element's order."""
    m, k = a.shape
    n = out.shape[1]
    lanes = VEC_BITS // (8 * a.itemsize)
    nr = TV * lanes
    kc = max(min(k, q), 1)
    of = out.ravel()
    fused = bias.size > 0
    # (the work buffer's parts, each from a line: panels, a's rows, one tile of out)
    shift = (-work.ctypes.data // a.itemsize) % ALIGN
    tiles = _tiles(n, a.itemsize)
    nt = max(min(nt, tiles), 1)
    a_at = shift + (nt * kc * nr + ALIGN - 1) // ALIGN * ALIGN
    once = nt < tiles  # (N blocks: a row chunk's K block of `a` packed once for all)
    c_at = a_at + (_a_rows(m, once) * kc + ALIGN - 1) // ALIGN * ALIGN
    panels = work[shift:]
    tile_c = work[c_at : c_at + MR * nr].reshape((MR, nr))
    if k == 0:
        out[:] = 0
        if fused:
            out += bias
        return
    for r0 in range(0, m, ROWS):  # (a row chunk)
        r1 = min(m, r0 + ROWS)
        k0 = 0
        while k0 < k:
            kk = k_depth(k - k0, q, unroll)
            if once:
                for i0 in range(r0, r1, MC):
                    _pack_a(a, i0, min(r1, i0 + MC), k0, kk, work, a_at + (i0 - r0) * kk)
            j0, t0 = 0, 0
            while t0 < tiles:  # (an N block: tiles t0..t1, columns j0..j1)
                j1, t1 = j0, t0
                while t1 < tiles and t1 - t0 < nt:
                    j1 += _tile_width(-(-(n - j1) // lanes)) * lanes
                    t1 += 1
                j1 = min(j1, n)
                _pack_b(b, k0, kk, panels, nr, j0, j1)
                for i in range(r0, r1, MR):
                    rows = min(MR, m - i)
                    a0 = a_at + (i - r0) * kk
                    if not once:  # (one N block: MC rows packed right before they run)
                        a0 = a_at + (i - r0) % MC * kk
                        if a0 == a_at:
                            _pack_a(a, i, min(r1, i + MC), k0, kk, work, a_at)
                    col = j0
                    for t in range(t0, t1):
                        tw = _tile_width(-(-(n - col) // lanes))
                        w = min(tw * lanes, n - col)
                        base = shift + (t - t0) * kk * nr
                        whole = rows == MR and w == tw * lanes
                        if whole:  # (the next tile's rows of out)
                            nxt = (i * n + col + w) if col + w < j1 else ((i + MR) * n + j0)
                            if nxt + (MR - 1) * n < m * n:
                                for r in range(MR):
                                    for e in range(0, tw * lanes, lanes):
                                        _prefetch_w(of, nxt + r * n + e)
                        if k0 == 0 and whole and not fused:
                            _call(work, a0, base, lanes, tw, 0, of, i * n + col, n, kk)
                        else:  # (a later K block, a bias, a partial row block or tile: via tile_c)
                            _call(work, a0, base, lanes, tw, 0, work, c_at, nr, kk)
                            if whole:
                                _add(tile_c, of, i * n + col, n, tw, k0 == 0, bias, col)
                            else:
                                _add_partial(tile_c, out, i, col, rows, w, k0 == 0, bias)
                        col += tw * lanes
                j0, t0 = j1, t1
            k0 += kk


@njit(cache=True, nogil=True, inline="always")
def _add_partial(tile_c, out, i, col, rows, w, first, bias):
    """A partial tile's sums (rows x w) into out from (i, col): stored in the first K block
    (onto the bias when there is one), added after."""
    for r in range(rows):
        for e in range(w):
            if not first:
                out[i + r, col + e] += tile_c[r, e]
            elif bias.size > 0:
                out[i + r, col + e] = bias[col + e] + tile_c[r, e]
            else:
                out[i + r, col + e] = tile_c[r, e]


@njit(cache=True, nogil=True, inline="always")
def _add(tile_c, of, c0, n, tw, first, bias, col):
    """A whole tile's sums onto out's at of[c0] (row stride n): onto the bias row's columns from
    `col` in the first K block, onto out's own values after."""
    if first:
        if tw == 3:
            _add3(tile_c, of, c0, n, bias, col, 0)
        elif tw == 2:
            _add2(tile_c, of, c0, n, bias, col, 0)
        else:
            _add1(tile_c, of, c0, n, bias, col, 0)
    elif tw == 3:
        _add3(tile_c, of, c0, n, of, c0, n)
    elif tw == 2:
        _add2(tile_c, of, c0, n, of, c0, n)
    else:
        _add1(tile_c, of, c0, n, of, c0, n)
