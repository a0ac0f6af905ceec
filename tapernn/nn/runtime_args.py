"""The module-level helpers of nn/runtime.py's Runtime: a call's arrays in the model's dtype,
its leaves' names, the PlanOptions of the module called, rho, hooks, final states copied out of
a slab."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ArgumentError, ArgumentTypeError, DTypeError, where
from ..regions import DEFAULT_OPTIONS
from ..validation import data_array, narrowed
from .tree import count_leaves


def _has_hook(m: Any) -> bool:
    """m's class overrides Module._before_forward (or the instance sets its own)."""
    hook = m.__dict__.get("_before_forward") or type(m)._before_forward
    return not getattr(hook, "does_nothing", False)


def _as_array(x: Any, root: Any, copy: bool = False) -> np.ndarray:
    """x as an array of the model's float dtype; with `copy`, never the caller's own array."""
    if type(x) is not np.ndarray:  # (a subclass too: np.matrix, np.memmap -> a plain array)
        if isinstance(x, np.ma.MaskedArray):
            raise DTypeError(
                f"{root.describe()}: got a numpy masked array, whose mask the model would not "
                f"see; pass np.ma.filled(x, 0) (zero rows with MaskZero / lengths= for padding)"
            )
        x = np.asarray(x)
        if x.dtype == object:
            raise ArgumentTypeError(
                f"{root.describe()}: inputs are arrays or (nested) lists of arrays"
            )
    if x.dtype.kind not in "fiub":  # (the message names the model: built only when raising)
        data_array(root.describe(), x)
    if x.dtype.kind == "b":
        return x.astype(root.dtype)
    if x.dtype.kind == "f" and x.dtype != root.dtype:  # data follows the model's dtype (astype
        return narrowed(root.describe(), "an input array", x, root.dtype)  # converts models)
    return x.copy() if copy else x


def refuse_promoted(root: Any, leaves: list, names: list[str], outputs: list) -> None:
    """A traced call whose output left the model's float dtype because an integer input array
    promoted it (NumPy: int32 / int64 with float32 -> float64) is a DTypeError naming that
    input: before, a float32 model given int64 data computed in float64 silently (a recurrent
    one failed on its state's dtype). Ids a LookupTable reads stay integers (no float output)."""
    want = root.dtype
    if not any(n.dtype.kind == "f" and n.dtype.itemsize > want.itemsize for n in outputs):
        return
    for x, name in zip(leaves, names):
        if x.dtype.kind in "iu" and np.result_type(x.dtype, want) != want:
            raise DTypeError(
                f"{root.describe()}: {name} holds {x.dtype} integers, which NumPy's rules "
                f"promote with the model's {want} to {np.result_type(x.dtype, want)}; pass "
                f"{name}.astype(np.{want}) (ids a LookupTable reads may stay integers)"
            )


# ops whose integer result wraps around in a dtype narrower than int64 (int8: 100 * 100 = 16);
# float-only functions of integers are refused by the ops themselves (ops/registry.refuse_kind),
# sum counts in int64 (np.add.reduce's dtype); abs stays (MaskZero's zero test of ids: abs of
# int8 -128 is -128, still nonzero)
WRAPPING = frozenset({"add", "sub", "mul", "power", "neg", "matmul", "add_n"})


def refuse_integer_math(root: Any, leaves: list, names: list[str], nodes: list) -> None:
    """Integer data that a traced call computes with as numbers in a dtype narrower than int64
    is a DTypeError naming the op's module and the astype to make: before, int8 data was
    squared in int8 (100 -> 16). A function tn.trace records keeps NumPy's wrapping integer
    arithmetic (docs/torch7_classes.md); a module computes in its float dtype, so wrapped
    integers there are a silent wrong answer. (A float-only op -- tanh, sigmoid, ... -- refuses
    integer operands when traced, modules or not: ops/registry.refuse_kind.) Integer data a
    layer's parameters meet (int @ float is float) and ids (LookupTable) stay accepted."""
    ints = [(x.dtype, name) for x, name in zip(leaves, names) if x.dtype.kind in "iu"]
    if not ints:
        return
    derived = set()  # nodes computed from integer data (a loop body's integer inputs count)
    for n in _all_nodes(nodes):
        if n.op == "input" and n.dtype.kind in "iu":
            derived.add(n)
        if not any(i in derived for i in n.inputs):
            continue
        derived.add(n)
        if not any(i.dtype.kind in "iu" for i in n.inputs):
            continue
        if n.op in WRAPPING and n.dtype.kind in "iu" and n.dtype.itemsize < 8 and not _plus_0(n):
            fix = " and ".join(f"{name}.astype(np.{root.dtype})" for _, name in ints)
            given = ", ".join(f"{name} {dtype}" for dtype, name in ints)
            raise DTypeError(
                f"{root.describe()}: integer data ({given}) "
                f"reaches {n.op}{where(n.scope or None, n.step)}, which would compute in "
                f"{n.dtype} and wrap around; pass {fix} (integer arrays are for ids, as a "
                f"LookupTable reads)"
            )


def _plus_0(n: Any) -> bool:
    """n adds or subtracts a constant 0 (nn.Copy's `x + 0`): it cannot wrap."""
    return n.op in ("add", "sub") and any(
        i.op == "constant" and not np.any(i.value) for i in n.inputs
    )


def _all_nodes(nodes: list) -> Any:
    """`nodes` and those of the loop bodies (a rolled scan's `body` graph) inside them."""
    for n in nodes:
        yield n
        body = n.attrs.get("body")
        if body is not None and hasattr(body, "nodes"):
            yield from _all_nodes(body.nodes)


def _plan_options(root: Any) -> Any:
    """The PlanOptions of `root`'s programs (its own, else the defaults); a module inside it
    with options of its own that differ is refused: they would be ignored silently (the
    programs are planned for the module called, as a whole)."""
    options = root._plan_options or DEFAULT_OPTIONS
    for m in root.modules():
        if m is not root and m._plan_options is not None and m._plan_options != options:
            raise ArgumentError(
                f"{m.describe()} has PlanOptions of its own, but it runs inside {root.describe()},"
                f" whose programs are planned as a whole with {'its' if root._plan_options else 'the default'}"
                f" options: call set_plan_options on {root.describe()} (the module you call)"
            )
    return options


def _own(state: np.ndarray) -> np.ndarray:
    """A final state that is a view of a larger array (a rolled loop's slab) as its own copy:
    the state the next call starts from must not keep the whole slab alive through it."""
    base = state.base
    return state.copy() if base is not None and base.nbytes > state.nbytes else state


def _leaf_names(tree: Any, n_args: int, arg_names: tuple[str, str]) -> list[str]:
    """Names of a call's input leaves (graph inputs, diagrams, generated code), its two
    arguments' from the module's `arg_names` (a criterion's (input, target), a Sequencer's
    (input, length_mask) with lengths=)."""
    base = list(arg_names) if n_args == 2 else [arg_names[0]]
    names = []
    for k, sub in enumerate(tree):
        prefix = base[k] if k < len(base) else f"arg{k}"
        names += [prefix] if sub == "*" else [f"{prefix}[{j}]" for j in range(count_leaves(sub))]
    return names


def _rho(root: Any) -> int | None:
    values = [m.rho for m in root.modules() if getattr(m, "rho", None)]
    return min(values) if values else None
