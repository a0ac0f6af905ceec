"""Lowering of what the optimisation passes make (optimisation tier): fused elementwise nodes
-- one line per instruction, or, when the same fused program on large values recurs at least
PlanOptions.kernel_min_uses times (every step of a long unrolled loop), one call of a function
made once for it, or with the numba backend one call of a compiled loop -- and sigmoids as
inline ufunc lines (PlanOptions.inline_sigmoid). codegen.Program inherits FusedLowering."""

from __future__ import annotations

import math
import re

import numpy as np

from .graph import Graph, Node
from .numpy_quirks import NEGATIVE_OUT_BROKEN
from .ops.fused import temp_slots
from .plan_options import lowering_size

# sigmoids on at most this many elements are lowered inline through logaddexp (four calls,
# Program._sigmoid_lines); larger ones through 1 / (1 + exp(min(-a, L))) (five calls, each
# cheaper per element), or, where a tail reader reads them, the exact op
EXACT_SIGMOID_INLINE_SIZE = 128

# ops whose result depends on the relative precision of a small sigmoid beyond what an
# underflowing exp keeps (log(sigmoid(a)) for a < -88 in float32): their sigmoid operands
# keep an unclamped exact form
_TAIL_READERS = ("log", "div", "power")

# lone elementwise ops (not fused: their values are saved for backward, or read by several
# groups) that the numba backend runs as a one-instruction kernel on values of at least
# NUMBA_LONE_MIN_SIZE elements: one pass over memory with vecmath's vectorised float32 exp /
# tanh where NumPy makes one (tanh, exp) or five (sigmoid) passes at libm speed (2x faster at
# (32, 512) float32; BENCHMARKS.md issue-19 helem). float64 too: vecmath's float64 tanh is as
# fast as NumPy's, and a step program with no NumPy tanh/exp runs as a step loop (hf64).
NUMBA_LONE_OPS = {"float32": ("sigmoid", "tanh", "exp"), "float64": ("sigmoid", "tanh", "exp")}
NUMBA_LONE_MIN_SIZE = 1024


def sigmoid_exp_limit(dtype) -> float:
    """The clamp of -a in the inline sigmoid 1 / (1 + exp(min(-a, limit))): exp(limit) is
    finite in `dtype` (no overflow warning), and sigma(-limit) is below the smallest normal
    number, so clamping changes a result by less than that (88.72 for float32)."""
    return math.floor(math.log(float(np.finfo(dtype).max)) * 100) / 100


class FusedLowering:
    """Program's methods for fused nodes and inline sigmoids (see codegen.Program)."""

    def _prepare_special(self, g: Graph) -> dict[tuple, int]:
        """Per graph: the sigmoids a tail reader reads, how often each fused program recurs."""
        self.exact_sigmoid = {i for n in g.nodes if n.op in _TAIL_READERS for i in n.inputs}
        uses: dict[tuple, int] = {}
        for n in g.nodes:
            if n.op == "fused":
                key = self._kernel_key(n)
                uses[key] = uses.get(key, 0) + 1
        return uses

    def _special_lines(
        self, n: Node, args: list[str], out: str | None, views: dict, name: str, uses: dict
    ) -> list[str] | None:
        """n's lines, or None for the plain lowering (codegen Program._call)."""
        if n.op != "fused":
            if self.numba_lone(n):
                compiled = self._compiled_call(n, args, out, views)
                if compiled is not None:
                    return [compiled]
            if not (
                n.op == "sigmoid"
                and self.options.inline_sigmoid
                and self._inline_sigmoid(n.shape, n in self.exact_sigmoid)
            ):
                return None
            return self._sigmoid_lines(
                args[0],
                name,
                out,
                n.dtype,
                lowering_size(n.shape) <= EXACT_SIGMOID_INLINE_SIZE or n in self.exact_sigmoid,
            )
        compiled = self._compiled_call(n, args, out, views) if self.backend == "numba" else None
        if compiled is not None:
            return [compiled]
        temps = self._temps(n, views)
        if (
            uses[self._kernel_key(n)] >= self.options.kernel_min_uses
            and lowering_size(n.shape) >= self.options.kernel_min_size
        ):
            operands = args + temps + ([out] if out else [])  # (out: also a claimed array)
            return [f"{self._fused_kernel(n, with_out=out is not None)}({', '.join(operands)})"]
        return self._fused_lines(n, args, out, temps, name)

    def numba_lone(self, n: Node) -> bool:
        """Whether n is a lone elementwise op the numba backend runs as a kernel."""
        return (
            self.backend == "numba"
            and lowering_size(n.shape) >= NUMBA_LONE_MIN_SIZE
            and not n.attrs
            and n.op in NUMBA_LONE_OPS.get(np.dtype(n.dtype).name, ())
        )

    def _compiled_call(self, n: Node, args: list[str], out: str | None, views: dict) -> str | None:
        """A call of n's numba kernel (backends/numba_backend.py) writing `out` (or an array
        allocated per call), or None when the group falls back to the NumPy lowering (the
        reason is kept in self.fallbacks and shown in the CompileReport). 0-d operands are
        passed as arrays (a 0-d result of a reduction may be a NumPy scalar). The call goes
        through a Site (backends/background.py; made by _make_sites once the program exists), a
        bound name rebound to the kernel once it is compiled for the argument types the first
        call saw: at that first call, or with background compilation at the top-level program's
        switch call (backends/background.py)."""
        from .backends import background, deferred, numba_backend

        operands = [(i.shape, i.dtype) for i in n.inputs]
        later = background.enabled(deferred(self.options.backend))
        lone = n.op != "fused"
        program = (
            ((n.op, tuple(range(len(n.inputs))), (), n.shape, n.dtype),)
            if lone
            else n.attrs["program"]
        )
        inplace = next((k for k, a in enumerate(args) if out is not None and a == out), None)
        handle, why = numba_backend.plan_kernel(
            program,
            operands,
            n.shape,
            n.dtype,
            background=later,
            memo=self.kernel_plans,
            inplace=inplace,
        )
        if handle is None:
            ops = "+".join(ins[0] for ins in program)
            self.fallbacks.append(f"{ops}: {why}")
            return None
        if later and not deferred(self.options.backend):
            background.request_planned(handle)  # types known now: compiling starts at once
        name = self.bind("nks", None)
        numpy_fn = self._lone_function(n) if lone else self._fused_kernel(n, with_out=True)
        temps = [] if lone else self._temps(n, views)
        self.sites.append((name, handle, numpy_fn, temps, later))
        self.compiled_kernels.setdefault(id(handle), "")
        args = [
            f"np_asarray({a})" if i.shape == () and i.op != "constant" else a
            for a, i in zip(args, n.inputs)
        ]
        if out is None:
            out = (
                f"{self._named('np_empty', np.empty)}({self.bind('s', n.shape)}, "
                f"{self.bind('d', n.dtype)})"
            )
        return f"{name}({', '.join(args + [out])})"

    def _lone_function(self, n: Node) -> str:
        """The name of a function (x0, ..., out) running lone op n's NumPy lowering into out
        (the Site's lowering until its kernel is there): made once per (op, dtype, form)."""
        exact = n in self.exact_sigmoid
        key = ("lone", n.op, len(n.inputs), np.dtype(n.dtype).str, exact)
        if key not in self.fused_kernels:
            args = [f"x{k}" for k in range(len(n.inputs))]
            if n.op == "sigmoid" and self._inline_sigmoid(n.shape, exact):
                small = lowering_size(n.shape) <= EXACT_SIGMOID_INLINE_SIZE or exact
                lines = self._sigmoid_lines(args[0], "out", "out", n.dtype, small)
            else:
                lines = [self._call(n.op, args, {}, "out", n.dtype)]
            body = "\n".join("    " + line for line in lines + ["return out"])
            used = sorted(set(re.findall(r"[A-Za-z_]\w*", body)) & self.bound.keys())
            name = self._named(f"lone_kernel{len(self.fused_kernels)}", None)  # set after exec
            params = ", ".join(args + ["out", "*"] + used)
            self.fused_kernels[key] = (name, used, f"def {name}({params}):\n{body}\n")
        return self.fused_kernels[key][0]

    def _make_sites(self) -> None:
        """Each numba call site becomes a Site: the group's NumPy function (with its
        temporaries) runs until the Site puts the kernel in its bound name."""
        from .backends.background import Site

        for name, handle, fused, temps, later in self.sites:
            site = Site(handle, self.bound[fused], [self.bound[t] for t in temps], later)
            site.attach(self.fn, name)
            self.bound[name] = site

    def _temps(self, n: Node, views: dict) -> list[str]:
        """The names of a fused node's preallocated temporaries (in slot order)."""
        slots = fused_slots(n)[1]
        return [views[(b, s)] for b, (s, _) in zip(self.plan.scratch_of.get(n, []), slots)]

    def _kernel_key(self, n: Node, with_out: bool = False) -> tuple:
        # what a fused node's lines depend on besides its operand and buffer names
        plan = self.plan
        has_out = with_out or n in plan.inplace or n in plan.placed or n in plan.buffer_of
        return (n.attrs["program"], has_out, n in self.exact_sigmoid)  # (has_out: see _out)

    def _fused_kernel(self, n: Node, with_out: bool = False) -> str:
        """The name of a function running n's program (made once per program): a program met
        kernel_min_uses times or more (every step of a long unrolled loop) is compiled once
        instead of once per step -- its lines were most of a long program, and compiling the
        source a third of building it. The function takes the operands, the temporaries and
        the output buffer (when planned, or `with_out`). One call per use costs ~0.3 us: nothing
        next to the work on values of kernel_min_size elements or more, but a few percent of a
        tiny model's call, which keeps the lines inline."""
        key = self._kernel_key(n, with_out)
        if key not in self.fused_kernels:
            args = [f"x{k}" for k in range(len(n.inputs))]
            temps = [f"t{k}" for k in range(len(fused_slots(n)[1]))]
            out = ["out"] if key[1] else []
            lines = self._fused_lines(n, args, (out or [None])[0], temps, "r")
            lines[-1] = f"return {lines[-1]}"
            body = "\n".join("    " + line for line in lines)
            used = sorted(set(re.findall(r"[A-Za-z_]\w*", body)) & self.bound.keys())
            name = self._named(f"fused_kernel{len(self.fused_kernels)}", None)  # set after exec
            params = ", ".join(args + temps + out + ["*"] + used)
            self.fused_kernels[key] = (name, used, f"def {name}({params}):\n{body}\n")
        return self.fused_kernels[key][0]

    def _fused_lines(
        self, n: Node, args: list[str], out: str | None, temps: list[str], result: str
    ) -> list[str]:
        """The fused program inline: each instruction writes its preallocated temporary, the
        last one the node's output."""
        slot_of = fused_slots(n)[0]
        program = n.attrs["program"]
        exact = {-r - 1 for op, refs, *_ in program if op in _TAIL_READERS for r in refs if r < 0}
        if n in self.exact_sigmoid:
            exact.add(len(program) - 1)
        lines, results = [], []
        for j, (op, refs, attrs, shape, dtype) in enumerate(program):
            ins = [args[r] if r >= 0 else results[-r - 1] for r in refs]
            target = out if slot_of[j] is None else temps[slot_of[j]]
            if op == "sigmoid" and self._inline_sigmoid(tuple(shape), j in exact):
                # the last instruction's operand is a temporary dying here: all calls but the
                # last run in it, only the last writes out (which may be a strided region of
                # a larger storage, where a ufunc pays per row: 1 such call, not 4 or 5)
                work = ins[0] if out and slot_of[j] is None and refs[0] < 0 else None
                logaddexp = j in exact or lowering_size(tuple(shape)) <= EXACT_SIGMOID_INLINE_SIZE
                lines += self._sigmoid_lines(
                    ins[0], target or result, target, dtype, logaddexp, work
                )
            else:
                lines.append(self._call(op, ins, dict(attrs), target, dtype))
            results.append(target)
        return lines

    def _scalar(self, value: float, dtype) -> str:
        """A bound 0-d array of `dtype` holding `value`, one per (value, dtype) and program: a
        ufunc converts a Python float operand on every call (~2 us of a 4 us logaddexp on a
        few elements); the value in the dtype's loop is the same."""
        names = self.__dict__.setdefault("_scalars", {})
        key = (float(value), np.dtype(dtype).str)
        if key not in names:
            names[key] = self.bind("z", np.array(value, dtype=dtype))
        return names[key]

    @staticmethod
    def _inline_sigmoid(shape: tuple, exact: bool) -> bool:
        # (a 0-d sigmoid is one call of the op: a ufunc on a 0-d array returns a scalar,
        # which the later in-place lines could not write)
        return shape != () and (not exact or lowering_size(shape) <= EXACT_SIGMOID_INLINE_SIZE)

    def _sigmoid_lines(
        self, x: str, name: str, out: str | None, dtype, logaddexp: bool, work: str | None = None
    ) -> list[str]:
        """A sigmoid as ufunc lines writing `name` in place (no temporaries, no call frame);
        the last line is a bare call: the caller prefixes the assignment. Both forms keep
        relative accuracy in both tails, in float32 and float64 (the tanh form 0.5 * tanh(0.5 *
        a) + 0.5 used for float32 before gave 0 below a = -17: Sigmoid -> BCE lost its
        gradient). Small values (or read by a tail reader): sigma(a) = exp(-log(1 + exp(-a))),
        four calls, unclamped: log(sigma(a)) keeps its digits down to the last subnormal, sigma
        itself has relative error ~ |a| * eps / 2 for |a| < 36 (under 20 ulps). Larger values:
        sigma(a) = 1 / (1 + exp(min(-a, L))), L = sigmoid_exp_limit(dtype): under 2 ulps
        wherever sigma(a) is a normal number, and faster per element than tanh or logaddexp.
        With `work` (a temporary the caller may overwrite) all calls but the last write it."""
        # (np.negative into a strided out= is wrong on some NumPy builds: numpy_quirks)
        neg = ("multiply", "{}, " + self._scalar(-1.0, dtype)) if NEGATIVE_OUT_BROKEN else None
        neg = neg or ("negative", "{}")
        if logaddexp:
            calls = [neg, ("logaddexp", self._scalar(0.0, dtype) + ", {}"), neg, ("exp", "{}")]
        else:
            limit = self._scalar(sigmoid_exp_limit(dtype), dtype)
            one = self._scalar(1.0, dtype)
            calls = [
                neg,
                ("minimum", "{}, " + limit),
                ("exp", "{}"),
                ("add", "{}, " + one),
                ("divide", one + ", {}"),
            ]
        lines = []
        for k, (op, operands) in enumerate(calls):
            fn = self._named(f"np_{op}", getattr(np, op))
            src = operands.format(x if k == 0 else work or name)
            if work is not None:
                lines.append(f"{fn}({src}, out={work if k < len(calls) - 1 else out})")
            elif k == 0 and name != out:  # fused temporaries are names of preallocated buffers
                lines.append(f"{name} = {fn}({src}{f', out={out}' if out else ''})")
            else:
                lines.append(f"{fn}({src}, out={name})")
        return lines


_SLOTS: dict[tuple, tuple[list, list]] = {}


def fused_slots(n: Node) -> tuple[list, list]:
    """temp_slots of n's program, computed once per distinct program (the planner and the code
    generator ask for every fused node several times; every step has the same programs)."""
    program = n.attrs["program"]
    slots = _SLOTS.get(program)
    if slots is None:
        slots = temp_slots(program)
        if len(_SLOTS) < 10_000:
            _SLOTS[program] = slots
    return slots


def fused_scratch(n: Node) -> list[tuple[tuple, np.dtype]]:
    return fused_slots(n)[1] if n.op == "fused" else []
