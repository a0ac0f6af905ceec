"""Five LLVM-level helpers the generated numba kernels call (imported by their module header, so
only once numba is): float32 from its bit pattern (2^k for the vectorisable exp of vecmath.py),
a fused multiply-add (vecmath's polynomials), a row of a 2-D array as a C-contiguous 1-D view
(loops over strided gate views vectorise), a C array of any shape inside a kernel's workspace
(its buffers: loop_source.LoopSource.buffer), and an array copied into another of its shape
(`put`: the step loops' concatenations and copies, without numba's slice assignment's cost)."""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic
from numba.np.arrayobj import (
    extents_may_overlap,
    get_array_memory_extents,
    load_item,
    make_array,
    populate_array,
    store_item,
)


@intrinsic
def f32_bits(typingctx, bits):
    """The float32 whose IEEE bits are the low 32 bits of the integer `bits` (a bitcast:
    vectorises, where building 2^k from int64 shifts or ldexp does not)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        elif bits.bitwidth < 32:
            value = builder.sext(value, ir.IntType(32))
        return builder.bitcast(value, context.get_value_type(types.float32))

    return types.float32(bits), codegen


@intrinsic
def f64_bits(typingctx, bits):
    """The float64 whose IEEE bits are the integer `bits` (a bitcast, as f32_bits)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth < 64:
            value = builder.sext(value, ir.IntType(64))
        return builder.bitcast(value, context.get_value_type(types.float64))

    return types.float64(bits), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's llvm.fma: one vfmadd on every x86-64 CPU with FMA, packed
    in a vectorised loop). Written out where vecmath wants it, not left to fastmath's
    contraction: the same bits inline or called, on AVX2 and AVX-512 alike (BENCHMARKS.md
    h256d). Mixed float types are computed in the widest, as numba's `a * b + c` promotes: a
    float32 helper (vecmath's vm_*, float32 constants) typed for float64 values still types."""
    if not all(isinstance(t, types.Float) for t in (a, b, c)):
        return None
    wide = max((a, b, c), key=lambda t: t.bitwidth)

    def codegen(context, builder, signature, args):
        args = [context.cast(builder, v, t, wide) for v, t in zip(args, signature.args)]
        return builder.fma(*args)

    return wide(a, b, c), codegen


@intrinsic
def c_row(typingctx, array, index):
    """Row `index` of a 2-D array as a 1-D C-contiguous array (no copy, no reference: it
    borrows the array's memory). Only correct where array.strides[1] == array.itemsize (the
    generated kernel checks that first): numba types a strided view's rows as layout "A", whose
    loops LLVM does not vectorise (a float32 exp over a (32, 512) gate view 5-7x slower)."""
    if not (isinstance(array, types.Array) and array.ndim == 2):
        return None
    if not isinstance(index, types.Integer):
        return None
    row_type = types.Array(array.dtype, 1, "C", readonly=not array.mutable)

    def codegen(context, builder, signature, args):
        array_type, index_type = signature.args
        ary = make_array(array_type)(context, builder, args[0])
        i = context.cast(builder, args[1], index_type, types.intp)
        shape = cgutils.unpack_tuple(builder, ary.shape, 2)
        strides = cgutils.unpack_tuple(builder, ary.strides, 2)
        data = cgutils.pointer_add(builder, ary.data, builder.mul(i, strides[0]))
        row = make_array(row_type)(context, builder)
        itemsize = context.get_constant(
            types.intp, context.get_abi_sizeof(context.get_data_type(array_type.dtype))
        )
        populate_array(
            row,
            data=builder.bitcast(data, ary.data.type),
            shape=[shape[1]],
            strides=[itemsize],
            itemsize=itemsize,
            meminfo=None,
        )
        return row._getvalue()

    return row_type(array, index), codegen


@intrinsic
def c_view(typingctx, work, start, shape):
    """`work[start:start + prod(shape)].reshape(shape)` of a 1-D C array as a C array (no copy,
    no reference: it borrows the workspace's memory, which its caller keeps alive), without the
    slice's and the reshape's checks, whose code made every kernel's cold compile ~30 % slower
    (the generator's offsets are in range by construction: loop_source.LoopSource.reserve)."""
    if not (isinstance(work, types.Array) and work.ndim == 1 and work.layout == "C"):
        return None
    if not isinstance(start, types.Integer):
        return None
    if not (isinstance(shape, types.UniTuple) and isinstance(shape.dtype, types.Integer)):
        return None
    ndim = shape.count
    view_type = types.Array(work.dtype, ndim, "C", readonly=not work.mutable)

    def codegen(context, builder, signature, args):
        work_type, start_type, shape_type = signature.args
        ary = make_array(work_type)(context, builder, args[0])
        begin = context.cast(builder, args[1], start_type, types.intp)
        itemsize = context.get_constant(
            types.intp, context.get_abi_sizeof(context.get_data_type(work_type.dtype))
        )
        dims = [
            context.cast(builder, d, shape_type.dtype, types.intp)
            for d in cgutils.unpack_tuple(builder, args[2], ndim)
        ]
        strides, stride = [], itemsize
        for d in reversed(dims):
            strides.insert(0, stride)
            stride = builder.mul(stride, d)
        # (a GEP, not pointer_add's int arithmetic: LLVM keeps the pointer's provenance, and
        # with it the alias analysis that lets the buffers' loops vectorise: 1.3x slower without)
        data = builder.gep(ary.data, [begin], inbounds=True)
        view = make_array(view_type)(context, builder)
        populate_array(
            view, data=data, shape=dims, strides=strides, itemsize=itemsize, meminfo=None
        )
        return view._getvalue()

    return view_type(work, start, shape), codegen


@intrinsic
def put(typingctx, dst, src):
    """`dst[...] = src` for two arrays of one shape (a ValueError if the shapes differ, numba's
    broadcasting is not done), each item cast to dst's dtype as numba's setitem casts it, src
    read from a copy first when the two may overlap in memory (as numba's slice assignment
    does). numba's own slice assignment formats both shapes into its error message: that
    message's unicode code was typed once per process (~5 s of CPU) and linked into and
    optimised with every kernel that assigns a slice (~0.3-0.5 s each; BENCHMARKS.md hcold8)."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)):
        return None
    if dst.ndim != src.ndim or not dst.mutable:
        return None

    def codegen(context, builder, signature, args):
        dty, sty = signature.args
        d = make_array(dty)(context, builder, args[0])
        s = make_array(sty)(context, builder, args[1])
        nd = dty.ndim
        d_shape = cgutils.unpack_tuple(builder, d.shape, nd)
        d_strides = cgutils.unpack_tuple(builder, d.strides, nd)
        s_shape = cgutils.unpack_tuple(builder, s.shape, nd)
        s_strides = cgutils.unpack_tuple(builder, s.strides, nd)
        differ = cgutils.false_bit
        for a, b in zip(d_shape, s_shape):
            differ = builder.or_(differ, builder.icmp_signed("!=", a, b))
        with builder.if_then(differ, likely=False):
            context.call_conv.return_user_exc(builder, ValueError, ("put: shapes differ",))
        s_start, s_end = get_array_memory_extents(
            context, builder, sty, s, s_shape, s_strides, s.data
        )
        d_start, d_end = get_array_memory_extents(
            context, builder, dty, d, d_shape, d_strides, d.data
        )
        overlap = extents_may_overlap(context, builder, s_start, s_end, d_start, d_end)
        intp = context.get_value_type(types.intp)

        def copy(from_type, data, strides, layout):
            with cgutils.loop_nest(builder, d_shape, intp) as idx:
                at = cgutils.get_item_pointer2(
                    context, builder, data, s_shape, strides, layout, idx
                )
                value = context.cast(
                    builder, load_item(context, builder, from_type, at), sty.dtype, dty.dtype
                )
                to = cgutils.get_item_pointer2(
                    context, builder, d.data, d_shape, d_strides, dty.layout, idx
                )
                store_item(context, builder, dty, value, to)

        with builder.if_else(overlap, likely=False) as (apart_not, apart):
            with apart_not:  # (src first into a C copy of its own, as numba's setitem)
                temp_type = sty.copy(layout="C", readonly=False)
                size = builder.mul(s.itemsize, s.nitems)
                temp = builder.bitcast(context.nrt.allocate(builder, size), s.data.type)
                with cgutils.loop_nest(builder, s_shape, intp) as idx:
                    at = cgutils.get_item_pointer2(
                        context, builder, s.data, s_shape, s_strides, sty.layout, idx
                    )
                    into = cgutils.get_item_pointer2(
                        context, builder, temp, s_shape, None, "C", idx
                    )
                    builder.store(builder.load(at), into)
                copy(temp_type, temp, None, "C")
                context.nrt.free(builder, builder.bitcast(temp, cgutils.voidptr_t))
            with apart:
                copy(sty, s.data, s_strides, sty.layout)
        return context.get_dummy_value()

    return types.none(dst, src), codegen
