"""`put(dst, src)`: an array copied into another of its shape, an LLVM-level helper the step
loops call (backends/step_loop.py: their concatenations' parts and saved rows, step_selects.puts)
in place of numba's slice assignment. Its own module, not numba_intrinsics (whose text names
every generated kernel): the step loops that import it carry this file's digest in their text
(step_selects.PUT), so a change here renames them, and only them."""

from __future__ import annotations

from numba.core import cgutils, types
from numba.core.extending import intrinsic
from numba.np.arrayobj import (
    extents_may_overlap,
    get_array_memory_extents,
    load_item,
    make_array,
    store_item,
)


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
