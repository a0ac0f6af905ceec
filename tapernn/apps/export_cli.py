"""`tapernn graph`: build a named model (or path.to.module:factory), run one forward and backward,
and write its unrolled diagram."""

from __future__ import annotations

import argparse
import warnings

from . import compile_flags
from .command_line import positive_int

FORMATS = (".svg", ".png", ".pdf", ".dot", ".gv", ".json")
MODEL_HELP = (
    "lstm|fastlstm|gru|rnn|seqlstm|seqgru|stacked|tutorial-acceptor|tutorial-transducer, "
    "path.to.module:Class (an nn.Cell subclass: Sequencer(Class(hidden, hidden))) "
    "or path.to.module:factory"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="lstm",
        help=f"{MODEL_HELP} (factory(steps, batch, size) -> (model, input, grad_output))",
    )
    parser.add_argument("--steps", type=positive_int, default=3, help="timesteps to unroll")
    parser.add_argument("--batch", type=positive_int, default=2, help="batch size")
    parser.add_argument("--hidden", type=positive_int, default=4, help="feature/hidden size")
    parser.add_argument(
        "--level",
        choices=("op", "module"),
        default="module",
        help="one box per (module, step), or every op",
    )
    parser.add_argument(
        "--view",
        choices=("forward", "backward", "both"),
        default="forward",
        help="the forward pass, the BPTT graph, or both",
    )
    parser.add_argument(
        "--cluster-by",
        choices=("step", "scope"),
        default="step",
        help="one cluster per timestep, or nested clusters per module",
    )
    parser.add_argument("--collapse", action="store_true", help="draw the step template once ×T")
    parser.add_argument(
        "--compiled", action="store_true", help="draw the compiled (optimised) program"
    )
    compile_flags.add_arguments(parser)
    parser.add_argument(
        "-o",
        "--output",
        default="graph.svg",
        help=f"output file; format from the suffix: {', '.join(FORMATS)}",
    )


def run(args: argparse.Namespace) -> int:
    from .. import random as tn_random
    from ..export import render, to_json
    from ..export.rendering import LAID_OUT, WideDiagramWarning, check_target, wide_note
    from .models import build_model

    path = check_target(args.output, FORMATS)
    tn_random.manual_seed(0)
    model, x, grad_out = build_model(args.model, args.steps, args.batch, args.hidden)
    compile_flags.apply(model, args)
    model.forward(x)
    if args.view != "forward" or args.compiled:
        model.backward(x, grad_out)
    if path.suffix.lower() == ".json":
        import json

        from ..export.rendering import write_whole

        write_whole(path, json.dumps(to_json(model)))
    else:
        laid_out = path.suffix.lower() in LAID_OUT and not args.collapse
        note = wide_note(args.steps, args.level, "--collapse") if laid_out else None
        if note is not None:
            print(f"note: {note}")
        with warnings.catch_warnings():  # (said above, as a note)
            warnings.simplefilter("ignore", WideDiagramWarning)
            render(
                model,
                path,
                level=args.level,
                view=args.view,
                cluster_by=args.cluster_by,
                collapse=args.collapse,
                compiled=args.compiled,
            )
    print(f"wrote {path}")
    return 0
