"""The numba side of the packed recurrent GEMM (backends/packed.py; BENCHMARKS.md "hgemm"):
out = a @ W for a weight packed once per loop call into panels of NR columns (packed.pack_panels:
(ceil(N / NR), K, NR), zero-padded; NV vectors of W lanes a row: packed.GEOMETRY). The
microkernel is LLVM IR through a numba @intrinsic: MR rows of `a` times TV = 3 vectors of the
panels taken across them (`_vector_tiles`; "h512", "hloopI"), MR * TV vector accumulators in
registers over the whole K loop, a broadcast of a[i, p] and TV loads of the panels per row and
k, llvm.fma. The drivers walk the tiles (the panels split over numba's threads by prange in the
parallel one), a large `a` in K blocks, and the row blocks; a partial row block or tile goes
through a zero-padded tile. Imported only once numba is (its jobs run in background.py's worker)."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic
from numba.np.arrayobj import make_array

# vector bits and vectors per panel row (NR = NV * lanes): AVX-512's 512, 4 here; the copy
# packed._kernel_module imports has this line set to packed.GEOMETRY[its instruction set]
VEC_BITS, NV = 512, 4  # (the geometry line)
# rows of `a` per microkernel call: 8 on AVX-512 (8 x 3 = 24 of its 32 zmm), 4 on AVX2 (4 x 3 =
# 12 of 16 ymm); a tile's K rows are read again for every row block, so MR sets the panel traffic
# per FMA. Intel Xeon ("hloopI"): 8 x 3 the fastest of 4 x 4, 4 x 5, 4 x 6, 8 x 2, 16 x 1, 2 x 8
# (float64 too, "hf64": 8 x 2, 12 x 2, 16 x 1 slower); Zen 4 ("hgemm"): 8 x 2, 8 x 3, 4 x 4 within 5 %
MR = 8 if VEC_BITS == 512 else 4
# vectors of a microkernel call ("tile"), read across the panels (`_vector_tiles`). On AVX2 4 x 3
# (4 x 2 keeps 8 FMA chains for 2 pipes of 4 cycles' latency, no slack: 1.15-1.37x slower, "h512")
TV = 3  # (_vector_tiles passes 3 offsets)
# whether microkernel calls prefetch (into L2) the next tile's vectors, k row by k row: on
# AVX-512, where `a` has more than 2 row blocks (Intel Xeon, "hloopI": 1.1-1.35x at 32 and 64
# rows, 0.9-1.05x at 16; "hf64": float64 at 16 rows within noise). Not on AVX2 ("h512")
PREFETCH = VEC_BITS == 512
# rows ahead of its own vectors a microkernel call prefetches into L1 (0: none): 8 on AVX-512 (Intel
# Xeon, "hkern": the loops' halves 0.85-0.95x the CPU; 4 and 16 rows, or into L2, slower; float64
# 4, 16, 24: within noise, "hf64"). Not on AVX2 (unmeasured on Zen 3)
NEAR = 8 if VEC_BITS == 512 else 0


def _vector_type(context, dtype, vec_bits):
    scal = context.get_value_type(dtype)
    lanes = vec_bits // (8 * context.get_abi_sizeof(scal))
    return scal, lanes, ir.VectorType(scal, lanes)


def make_microkernel(
    mr: int, nv: int, vec_bits: int, prefetch: bool = False, ka: int = 0, near: int = 0
):
    """kernel(a, a_off, panel, p_off, c, c_off, ldc, k) over flat C arrays (offsets and strides
    in elements), `a` a row block packed k-major (`_pack_a`: row i's element p at a[a_off + p *
    ka + i], ka >= mr, default mr: the mr broadcasts of a k at constant offsets from one pointer)
    and `p_off` a tuple of 2t + 1 integers: for i < mr, t vectors of c row i, contiguous from
    c[c_off + i * ldc], vector v = sum_p a[a_off + p * ka + i] * (the vector at
    panel[p_off[v] + p * NR]), NR = nv vectors (a panel row; a tile across panels:
    `_vector_tiles`); with `prefetch`, each p also prefetches panel[p_off[t + v] + p * NR] into
    L2 for v < t (llvm.prefetch), else those t are unused, and with `near` > 0 its own t vectors
    `near` rows ahead (panel[p_off[v] + (p + near) * NR]) into L1; p_off[2t] nonzero: each chain
    starts from c's value instead of 0 (c += the sum: a later K block). Each element of c is
    one chain of FMAs over p in order (a chain continued from c's float is the same chain): the
    same bits whatever the tile, the rows a call and the K blocks."""

    @intrinsic
    def kernel(typingctx, a, a_off, panel, p_off, c, c_off, ldc, k):
        if not (
            isinstance(p_off, types.UniTuple)
            and isinstance(p_off.dtype, types.Integer)
            and p_off.count >= 2
        ):
            return None
        tv = (p_off.count - 1) // 2  # (then t prefetch offsets, the accumulate flag)
        arrays = (a, panel, c)
        if not all(isinstance(x, types.Array) and x.layout == "C" for x in arrays):
            return None
        if not all(x.dtype == a.dtype for x in arrays) or a.dtype not in (
            types.float32,
            types.float64,
        ):
            return None
        sig = types.void(a, a_off, panel, p_off, c, c_off, ldc, k)

        def codegen(context, builder, signature, args):
            tys = signature.args

            def data(j):
                return make_array(tys[j])(context, builder, args[j]).data

            def idx(j):
                return context.cast(builder, args[j], tys[j], types.intp)

            a_ptr, p_ptr, c_ptr = data(0), data(2), data(4)
            a_off_ = idx(1)
            c_off_, ldc_, k_ = idx(5), idx(6), idx(7)
            scal, lanes, vty = _vector_type(context, signature.args[0].dtype, vec_bits)
            esize = context.get_abi_sizeof(scal)
            nr = lanes * nv
            i64 = ir.IntType(64)
            cast = tys[3].dtype  # (each vector its own offset)
            offs = [
                context.cast(builder, builder.extract_value(args[3], v), cast, types.intp)
                for v in range(2 * tv + 1)
            ]
            accumulate = offs.pop()
            ahead = offs[tv:] if prefetch else []
            offs = offs[:tv]
            fma = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(vty, [vty, vty, vty]),
                f"llvm.fma.v{lanes}f{8 * esize}",
            )

            def vptr(base, off):
                return builder.bitcast(builder.gep(base, [off], inbounds=True), vty.as_pointer())

            zero = ir.Constant(vty, [ir.Constant(scal, 0.0)] * lanes)
            c_rows = [
                builder.add(c_off_, builder.mul(ir.Constant(i64, i), ldc_)) for i in range(mr)
            ]
            init = [[zero] * tv for _ in range(mr)]
            # (the chains start from c's values when p_off's flag is set)
            entry = builder.block
            load = builder.append_basic_block("packed.load")
            start = builder.append_basic_block("packed.start")
            flag = builder.icmp_signed("!=", accumulate, ir.Constant(i64, 0))
            builder.cbranch(flag, load, start)
            builder.position_at_end(load)
            held = [
                [
                    builder.load(
                        vptr(c_ptr, builder.add(c_rows[i], ir.Constant(i64, v * lanes))),
                        align=esize,
                    )
                    for v in range(tv)
                ]
                for i in range(mr)
            ]
            builder.branch(start)
            builder.position_at_end(start)
            for i in range(mr):
                for v in range(tv):
                    phi = builder.phi(vty)
                    phi.add_incoming(zero, entry)
                    phi.add_incoming(held[i][v], load)
                    init[i][v] = phi
            pre = builder.block
            loop = builder.append_basic_block("packed.loop")
            done = builder.append_basic_block("packed.done")
            builder.cbranch(builder.icmp_signed(">", k_, ir.Constant(i64, 0)), loop, done)
            builder.position_at_end(loop)
            p = builder.phi(i64)
            p.add_incoming(ir.Constant(i64, 0), pre)
            acc = [[builder.phi(vty) for _ in range(tv)] for _ in range(mr)]
            for i in range(mr):
                for v in range(tv):
                    acc[i][v].add_incoming(init[i][v], pre)
            step = builder.mul(p, ir.Constant(i64, nr))
            a_row = builder.add(a_off_, builder.mul(p, ir.Constant(i64, ka or mr)))
            fetch = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t] + [ir.IntType(32)] * 3),
                "llvm.prefetch.p0i8",
            )
            # (read, data; locality 2: L2, the next tile; 3: L1, this tile's rows `near` ahead,
            # past its end too -- a prefetch never faults, so its address is no inbounds gep)
            fetches = [(builder.add(o, step), 2) for o in ahead]
            ahead_rows = builder.add(step, ir.Constant(i64, near * nr))
            fetches += [(builder.add(o, ahead_rows), 3) for o in (offs if near else ())]
            for at, locality in fetches:
                line = builder.bitcast(builder.gep(p_ptr, [at]), cgutils.voidptr_t)
                flags = [ir.Constant(ir.IntType(32), f) for f in (0, locality, 1)]
                builder.call(fetch, [line, *flags])
            b = [builder.load(vptr(p_ptr, builder.add(o, step)), align=esize) for o in offs]
            undef = ir.Constant(vty, ir.Undefined)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            new = []
            for i in range(mr):
                x = builder.load(
                    builder.gep(a_ptr, [builder.add(a_row, ir.Constant(i64, i))], inbounds=True),
                    align=esize,
                )
                xv = builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0))
                xv = builder.shuffle_vector(xv, undef, splat)
                new.append([builder.call(fma, [xv, b[v], acc[i][v]]) for v in range(tv)])
            p_next = builder.add(p, ir.Constant(i64, 1))
            p.add_incoming(p_next, loop)
            for i in range(mr):
                for v in range(tv):
                    acc[i][v].add_incoming(new[i][v], loop)
            builder.cbranch(builder.icmp_signed("<", p_next, k_), loop, done)
            builder.position_at_end(done)
            results = []
            for i in range(mr):
                for v in range(tv):
                    phi = builder.phi(vty)
                    phi.add_incoming(init[i][v], pre)
                    phi.add_incoming(new[i][v], loop)
                    results.append(phi)
            for i in range(mr):
                for v in range(tv):
                    off = builder.add(c_rows[i], ir.Constant(i64, v * lanes))
                    builder.store(results[i * tv + v], vptr(c_ptr, off), align=esize)
            return context.get_dummy_value()

        return sig, codegen

    return kernel


def _transpose_masks(rows: int, lanes: int) -> list[list[tuple[int, int, list[int]]]]:
    """The shuffle stages of `make_transpose`: per stage, per output vector, (source x, source
    y, the shufflevector mask over x and y). Vector i holds row i's elements at first; in the
    end vector v holds the elements v * lanes // rows.. of every row, element p of row i at
    (p % (lanes // rows)) * rows + i. Stage t swaps bit t of the vector index (the row) with a
    bit of the position (the element), so each output takes from two inputs."""
    bits, top = rows.bit_length() - 1, lanes.bit_length() - 1

    def layout(t, v, s):  # the (row, element) at vector v, position s after stage t
        if t == bits - 1:
            return (s % rows, v * (lanes // rows) + s // rows)
        row, p = v, s
        for u in range(t + 1):
            hi = top - bits + u
            row = row & ~(1 << u) | ((s >> hi) & 1) << u
            p = p & ~(1 << hi) | ((v >> u) & 1) << hi
        return (row, p)

    at = {(i, p): (i, p) for i in range(rows) for p in range(lanes)}  # -> (vector, position)
    stages = []
    for t in range(bits):
        stage, moved = [], {}
        for v in range(rows):
            labels = [layout(t, v, s) for s in range(lanes)]
            x, y = min(at[e][0] for e in labels), max(at[e][0] for e in labels)
            assert all(at[e][0] in (x, y) for e in labels), (rows, lanes, t, v)
            stage.append((x, y, [at[e][1] + lanes * (at[e][0] != x) for e in labels]))
            moved.update({e: (v, s) for s, e in enumerate(labels)})
        at = moved
        stages.append(stage)
    return stages


def make_transpose(rows: int, vec_bits: int):
    """kernel(a, row0, col0, dst, d_off, step): a[row0:row0 + rows, col0:col0 + lanes] (rows 0:
    lanes; a's rows contiguous) transposed into the C vector dst, its v-th vector at d_off + v *
    step (step lanes: element p of row i at d_off + p * rows + i) -- `rows` vector loads,
    log2(rows) stages of `rows` shuffles (`_transpose_masks`), `rows` vector stores."""

    @intrinsic
    def kernel(typingctx, a, row0, col0, dst, d_off, step):
        if not (
            isinstance(a, types.Array)
            and a.ndim == 2
            and isinstance(dst, types.Array)
            and dst.layout == "C"
            and a.dtype == dst.dtype
            and a.dtype in (types.float32, types.float64)
        ):
            return None
        sig = types.void(a, row0, col0, dst, d_off, step)

        def codegen(context, builder, signature, args):
            tys = signature.args
            arr = make_array(tys[0])(context, builder, args[0])
            out = make_array(tys[3])(context, builder, args[3]).data
            r0, c0, d0, ds = (
                context.cast(builder, args[j], tys[j], types.intp) for j in (1, 2, 4, 5)
            )
            scal, lanes, vty = _vector_type(context, tys[0].dtype, vec_bits)
            esize = context.get_abi_sizeof(scal)
            i64 = ir.IntType(64)
            stride = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
            base = builder.bitcast(arr.data, cgutils.voidptr_t)
            col = builder.mul(c0, ir.Constant(i64, esize))
            vecs = []
            for i in range(rows or lanes):
                at = builder.add(builder.mul(builder.add(r0, ir.Constant(i64, i)), stride), col)
                ptr = builder.bitcast(builder.gep(base, [at]), vty.as_pointer())
                vecs.append(builder.load(ptr, align=esize))
            for stage in _transpose_masks(rows or lanes, lanes):
                vecs = [
                    builder.shuffle_vector(
                        vecs[x], vecs[y], ir.Constant(ir.VectorType(ir.IntType(32), lanes), mask)
                    )
                    for x, y, mask in stage
                ]
            for v, vec in enumerate(vecs):
                at = builder.add(d0, builder.mul(ds, ir.Constant(i64, v)))
                ptr = builder.bitcast(builder.gep(out, [at], inbounds=True), vty.as_pointer())
                builder.store(vec, ptr, align=esize)
            return context.get_dummy_value()

        return sig, codegen

    return kernel


_micro = make_microkernel(MR, NV, VEC_BITS, PREFETCH, near=NEAR)
# a row block of at most 4 rows on AVX-512: 4 x 3 over the same packed a (its 8-row stride), not
# 8 x 3 over 4 padded rows (at 4 rows 1.35x 4 x 4's time, "hloopI"); AVX2's MR is 4
_micro_half = make_microkernel(4, NV, VEC_BITS, PREFETCH, MR, NEAR)
_transpose = make_transpose(MR, VEC_BITS)
_square = make_transpose(0, VEC_BITS)  # (lanes x lanes: pack_rows' blocks)


@njit(cache=True, nogil=True)
def _pack_a(a):
    """a (m, k) as its row blocks packed k-major, (ceil(m / MR), k, MR): [b, p, i] = a[b * MR + i,
    p], a last partial block zero-padded -- the microkernel's broadcasts of a k at constant
    offsets from one pointer (read in place, a's MR rows took as many strided pointers, which
    the K loop kept on the stack: BENCHMARKS.md "hloopI"). Whole row blocks in MR x lanes
    blocks by `_transpose` (4-6x the element-wise copy's speed, "hkern")."""
    m, k = a.shape
    ap = np.empty((-(-m // MR), k, MR), a.dtype)
    apf = ap.ravel()
    lanes = VEC_BITS // (8 * a.itemsize)
    full = m // MR * MR if a.strides[1] == a.itemsize else 0  # (rows of vectors: `_transpose`)
    kv = k // lanes * lanes
    for i in range(0, full, MR):
        for p in range(0, kv, lanes):
            _transpose(a, i, p, apf, i * k + p * MR, lanes)
        for p in range(kv, k):
            for r in range(MR):
                ap[i // MR, p, r] = a[i + r, p]
    for i in range(full, m, MR):  # (a partial row block, zero-padded; any a, element-wise)
        for p in range(k):
            for r in range(MR):
                ap[i // MR, p, r] = a[i + r, p] if i + r < m else 0
    return ap


@njit(cache=True, nogil=True)
def _tile(ap, m, pf, off, out, of, tile_c, col, w, k0, kk):
    """out[:, col:col + w] = a @ the tile's panel columns at `off` (the microkernel's p_off) over
    a's columns [k0, k0 + kk) (with p_off's flag, out += that K block's sum), row block by row
    block of `ap` (a's m rows: _pack_a), one of at most 4 rows by the 4-row microkernel where MR
    is 8; a partial row block or a tile wider than w through `tile_c` (holding out's values
    first for a later K block). The microkernels' call sites (inlined: typed per tile width)."""
    k = ap.shape[1]
    apf = ap.ravel()
    n = out.shape[1]
    width = tile_c.shape[1]
    tf_c = tile_c.ravel()
    for i in range(0, m, MR):
        rows = min(MR, m - i)
        tiled = rows < MR or w < width
        dst, dst_off, ld = of, i * n + col, n
        if tiled:
            dst, dst_off, ld = tf_c, 0, width
        if tiled and k0 > 0:
            for r in range(rows):
                for c in range(w):
                    tile_c[r, c] = out[i + r, col + c]
        if MR > 4 and rows <= 4:
            _micro_half(apf, i * k + k0 * MR, pf, off, dst, dst_off, ld, kk)
        else:
            _micro(apf, i * k + k0 * MR, pf, off, dst, dst_off, ld, kk)
        if tiled:
            for r in range(rows):
                for c in range(w):
                    out[i + r, col + c] = tile_c[r, c]


# a range's last 2 or 4 vectors as tiles of 2 (MR x 2), not 3 computing vectors to drop: dG @ W^T
# at H = 256 0.84-0.88x f32 / 0.95x f64 the time ("hf64"). AVX-512's (unmeasured on Zen 3)
PAIRS = VEC_BITS == 512


@njit(cache=True, nogil=True)
def _trio(v, last_v, k, nr, lanes, step):
    """The flat offsets (K block row `step`) of vectors v, v + 1, v + 2, none past last_v - 1."""
    return (
        _vector_offset(min(v, last_v - 1), k, nr, lanes) + step,
        _vector_offset(min(v + 1, last_v - 1), k, nr, lanes) + step,
        _vector_offset(min(v + 2, last_v - 1), k, nr, lanes) + step,
    )


@njit(cache=True, nogil=True)
def _vector_offset(v, k, nr, lanes):
    """Where vector v (column block v % NV of panel v // NV) starts in the flat panels."""
    return (v // NV) * k * nr + (v % NV) * lanes


# _vector_tiles' K blocks: when a holds more than K_BLOCK_FROM bytes (no longer in L2 with a
# tile's panels on Zen 3) and blocks of >= K_BLOCK_MIN rows fit, blocks of about K_BLOCK_BYTES of
# a's columns, each over every tile (chains continued from out's floats: same bits; "h512c")
K_BLOCK_FROM = 1 << 18
K_BLOCK_BYTES = 1 << 17
K_BLOCK_MIN = 256


@njit(cache=True, nogil=True)
def _k_block(m, k, itemsize):
    """The K block _vector_tiles runs a (m, k) a in: k (one block; 1 at k = 0, a block of no
    depth: out = 0) unless a is large and blocks of K_BLOCK_BYTES of its rows are >= K_BLOCK_MIN
    deep (a multiple of 16)."""
    if m * k * itemsize <= K_BLOCK_FROM:
        return max(k, 1)
    kc = (K_BLOCK_BYTES // (m * itemsize)) // 16 * 16
    return kc if K_BLOCK_MIN <= kc < k else k


@njit(cache=True, nogil=True)
def _vector_tiles(a, packed, out, first, last):
    """out[:, panels first..last) = a @ (those panels) in tiles of TV = 3 vectors: the panels'
    vectors in column order, a tile crossing a panel boundary where it falls (vector v: column
    block v % NV of panel v // NV), MR rows of a (packed: `_pack_a`) a microkernel call; a
    range's last 2 or 4 vectors in tiles of 2 (PAIRS), else a last tile of fewer vectors
    repeats its last (computed into the padded tile, not stored). A large a in K blocks."""
    _packed_tiles(_pack_a(a), a.shape[0], packed, out, first, last)


@njit(cache=True, nogil=True)
def _packed_tiles(ap, m, packed, out, first, last):
    """_vector_tiles of an `a` of m rows already packed (`_pack_a`'s ap: the native column
    split's two threads each pack their rows' blocks of it, backends/step_columns.py)."""
    k = ap.shape[1]
    nr = packed.shape[2]
    lanes = nr // NV
    n = out.shape[1]
    pf, of = packed.ravel(), out.ravel()
    tile_c = np.empty((MR, TV * lanes), ap.dtype)
    pair_c = np.empty((MR, 2 * lanes), ap.dtype)
    last_v = last * NV
    kc = _k_block(m, k, ap.itemsize)
    ahead = m > 2 * MR  # (the next tile prefetched: PREFETCH)
    for k0 in range(0, max(k, 1), kc):
        kk = min(kc, k - k0)
        step = k0 * nr  # (row k0 of a panel)
        v0 = first * NV
        while v0 < last_v:
            col, tw = v0 * lanes, 2 if PAIRS and (last_v - v0) in (2, 4) else TV
            own = _trio(v0, last_v, k, nr, lanes, step)
            fetch = _trio(v0 + (tw if ahead else 0), last_v, k, nr, lanes, step)
            w = min(min(tw, last_v - v0) * lanes, n - col)
            if tw == 2:
                offs = (own[0], own[1], fetch[0], fetch[1], min(k0, 1))
                _tile(ap, m, pf, offs, out, of, pair_c, col, w, k0, kk)
            else:  # (with the flag: a K block after the first adds to out)
                _tile(ap, m, pf, own + fetch + (min(k0, 1),), out, of, tile_c, col, w, k0, kk)
            v0 += tw


# out[:, panels first..last) = a @ (those panels): the drivers' and step loops' entry
_panels = _vector_tiles


@njit(cache=True, nogil=True)
def packed_matmul_serial(a, packed, out):
    _panels(a, packed, out, 0, packed.shape[0])


@njit(cache=True, nogil=True)
def pack_rows(w, out):
    """The panels of w.T (packed.pack_panels of a transposed view): out[j, r, c] = w[j*NR + c, r]
    for w (N, K) C, out (ceil(N / NR), K, NR) C, zero-padded past N. A full panel's K rows by
    lanes x lanes transposes (`_square`: (1024, 256) 0.20 -> 0.09 ms float32, 0.25 -> 0.19
    float64 against 16 x NR scalar blocks; BENCHMARKS.md "hrest2"), the rest element by element."""
    n, k = w.shape
    nr = out.shape[2]
    lanes = VEC_BITS // (8 * w.itemsize)
    outf = out.ravel()
    for j in range(out.shape[0]):
        kv = k // lanes * lanes if nr % lanes == 0 and (j + 1) * nr <= n else 0
        for r0 in range(0, kv, lanes):
            for c0 in range(0, nr, lanes):
                _square(w, j * nr + c0, r0, outf, (j * k + r0) * nr + c0, nr)
        for c in range(nr):
            for r in range(kv, k):
                out[j, r, c] = w[j * nr + c, r] if j * nr + c < n else 0


@njit(cache=True, nogil=True)
def pack_cols(w, out):
    """The panels of a C weight w (K, N) (packed.pack_panels): out[j, r, c] = w[r, j*NR + c],
    out (ceil(N / NR), K, NR) C, zero-padded past N. Row r of w read once, contiguously, its
    NR-column pieces written to each panel's row r: 1.5-1.8x NumPy's (K, full, NR) transposed
    copy at (1024, 256) and (2048, 512) float32 (BENCHMARKS.md "h256c")."""
    k, n = w.shape
    nr = out.shape[2]
    full = n // nr
    for r in range(k):
        for j in range(full):
            for c in range(nr):
                out[j, r, c] = w[r, j * nr + c]
        if full < out.shape[0]:
            for c in range(nr):
                out[full, r, c] = w[r, full * nr + c] if full * nr + c < n else 0


@njit(cache=True, nogil=True, parallel=True)
def packed_matmul_parallel(a, packed, out, parts):
    """The panels split into `parts` contiguous ranges, one per prange iteration."""
    npan = packed.shape[0]
    for t in prange(parts):
        _panels(a, packed, out, (npan * t) // parts, (npan * (t + 1)) // parts)


def lanes(dtype: np.dtype) -> int:
    return VEC_BITS // (8 * np.dtype(dtype).itemsize)
