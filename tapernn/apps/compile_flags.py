"""`tapernn inspect` / `tapernn graph --compiled`: the compile strategy from the command line, as
researchers comparing strategies set it from Python -- the backend and any PlanOptions field
(`module.set_plan_options`), passes of the default list left out (`module.set_passes`)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

_TRUE, _FALSE = ("true", "1", "on", "yes"), ("false", "0", "off", "no")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("auto", "numpy", "numba"),
        default=None,
        help="lower fused groups and step loops with this backend (auto: NumPy, numba only "
        "where it pays -- a small loop from its 1,000th call, a larger model's second plan from "
        "its 100th; default: the current one)",
    )
    parser.add_argument(
        "--option",
        type=plan_option,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a tapernn.PlanOptions field, repeatable (e.g. --option layout=feature "
        "--option step_loops=false)",
    )
    parser.add_argument(
        "--without-pass",
        type=default_pass,
        action="append",
        default=[],
        metavar="NAME",
        help="leave this pass of the default list out, repeatable (`tapernn inspect` lists "
        "them; a pass that runs more than once is left out everywhere)",
    )


def plan_option(text: str) -> tuple[str, Any]:
    """(field, value) of "field=value", the value of the field's type, checked by PlanOptions."""
    from ..errors import TapernnError
    from ..plan_options import PlanOptions

    fields = {f.name: f for f in dataclasses.fields(PlanOptions)}
    name, eq, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not eq or name not in fields:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}"
        )
    kind = type(fields[name].default)
    raw = raw.strip()
    try:
        if kind is bool:
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError(f"expected one of {'/'.join(_TRUE + _FALSE)}")
            value: Any = raw.lower() in _TRUE
        else:
            value = kind(raw)
        PlanOptions(**{name: value})
    except (ValueError, TapernnError) as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return name, value


def default_pass(text: str) -> str:
    """A name of the default pass list (as the compile report prints it)."""
    names = _default_names()
    if text not in names:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a pass of the default list; its passes: {', '.join(dict.fromkeys(names))}"
        )
    return text


def _default_names() -> list[str]:
    from ..passes import default_passes
    from ..passes.driver import pass_name

    return [pass_name(p) for p in default_passes()]


def apply(model: Any, args: argparse.Namespace) -> str:
    """Sets the flags' plan options and passes on `model` (before its first call); what was
    set, as one line ("" when nothing)."""
    from ..errors import ArgumentError
    from ..passes import default_passes
    from ..passes.driver import pass_name
    from ..plan_options import PlanOptions

    said = []
    fields = dict(args.option)
    if args.backend:
        if fields.get("backend", args.backend) != args.backend:
            raise ArgumentError(
                f"--backend {args.backend} and --option backend={fields['backend']} disagree: "
                f"give one"
            )
        fields["backend"] = args.backend
    if fields:
        model.set_plan_options(PlanOptions(**fields))
        said.append(", ".join(f"{k}={v}" for k, v in fields.items()))
    if args.without_pass:
        left = set(args.without_pass)
        model.set_passes([p for p in default_passes() if pass_name(p) not in left])
        said.append("the default passes without " + ", ".join(dict.fromkeys(args.without_pass)))
    return "; ".join(said)
