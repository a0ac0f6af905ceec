"""Five LLVM-level helpers the generated numba kernels call (imported by their module header, so
only once numba is): float32 from its bit pattern (2^k for the vectorisable exp of vecmath.py),
a fused multiply-add (vecmath's polynomials), a row of a 2-D array as a C-contiguous 1-D view (loops over strided gate views vectorise), a
C array of any shape inside a kernel's workspace (its buffers: loop_source.LoopSource.buffer),
and an integer LLVM cannot see the value of (a short gate loop's count: loop_values.loop_count)."""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array


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
def opaque(typingctx, n):
    """`n` through an empty inline assembly block: the same integer, whose value LLVM does not
    know. A loop of `range(opaque(n))` is not fully unrolled (LLVM unrolls a short loop of a
    known count into straight scalar code before its loop vectoriser runs, and no vector code
    comes of that: a (1, 5, 5) FastLSTM's sigmoids over 10 gates ran one at a time), so the
    vectoriser takes it; nothing else in the loop changes."""
    if not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[0], signature.args[0], types.intp)
        word = context.get_value_type(types.intp)
        block = ir.InlineAsm(ir.FunctionType(word, [word]), "", "=r,0", side_effect=False)
        return builder.call(block, [value])

    return types.intp(n), codegen
