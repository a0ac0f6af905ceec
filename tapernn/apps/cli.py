"""The `tapernn` command (also `python -m tapernn`): demo, train, graph, inspect, bench, cache.
Errors in arguments or files print one line and exit with code 2 (sizes too large for memory:
one line, code 1); a closed pipe exits quietly."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import interrupt
from ..errors import TapernnError
from .command_line import OneLineArgumentParser, positive_int


def _demo(args: argparse.Namespace) -> int:
    from . import tutorial

    render_or_source = None
    if args.diagram:
        try:
            from ..export.rendering import check_target, render_or_source
        except ImportError:
            print("(diagram export is not available in this build)")
        else:
            check_target(args.diagram)  # (before the tutorial runs, not after)
    acceptor = tutorial.main()
    if render_or_source is not None:
        path, note = render_or_source(acceptor, args.diagram, level="module")
        print(f"\nWrote the acceptor's unrolled diagram to {path}")
        if note:
            print(note)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .. import random as tn_random
    from . import compile_flags
    from .models import build_model

    tn_random.manual_seed(args.seed)
    model, x, grad_out = build_model(args.model, args.steps, args.batch, args.hidden)
    if args.dtype == "float32":
        model.astype("float32")
    chosen = compile_flags.apply(model, args)
    model.forward(x)
    model.backward(x, grad_out)
    print(f"{model.describe()}: T={args.steps}, B={args.batch}, H={args.hidden}, {args.dtype}")
    if chosen:
        print(f"compile flags: {chosen}")
    print(model.compile_report())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import benchmark, cache_cli, compile_flags, export_cli
    from . import train as train_command

    parser = OneLineArgumentParser(
        prog="tapernn", description="Torch7's rnn library on a graph-compiling NumPy autodiff."
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"tapernn {__version__}")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = subs.add_parser("demo", help="the Element-RNN tutorial, step by step")
    demo.add_argument(
        "--diagram",
        default="acceptor.svg",
        help="where to write the acceptor's unrolled diagram ('' to skip)",
    )
    demo.set_defaults(run=_demo)

    train = subs.add_parser("train", help="train a character-level LSTM language model")
    train_command.add_arguments(train)
    train.set_defaults(run=train_command.run)

    graph = subs.add_parser("graph", help="write an unrolled diagram of a model")
    export_cli.add_arguments(graph)
    graph.set_defaults(run=export_cli.run)

    inspect = subs.add_parser("inspect", help="print a model's compile report")
    inspect.add_argument("--model", default="lstm", help=export_cli.MODEL_HELP)
    inspect.add_argument("--steps", type=positive_int, default=10, help="timesteps to unroll")
    inspect.add_argument("--batch", type=positive_int, default=4, help="batch size")
    inspect.add_argument("--hidden", type=positive_int, default=32, help="feature/hidden size")
    inspect.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float64",
        help="floating-point type of parameters and data",
    )
    inspect.add_argument("--seed", type=int, default=0, help="seed of the library generator")
    compile_flags.add_arguments(inspect)
    inspect.set_defaults(run=_inspect)

    bench = subs.add_parser("bench", help="speed and memory against a hand-written NumPy LSTM")
    benchmark.add_arguments(bench)
    bench.set_defaults(run=benchmark.run)

    cache = subs.add_parser(
        "cache", help="the numba kernel cache: where, how big; --clear, --prune SIZE"
    )
    cache_cli.add_arguments(cache)
    cache.set_defaults(run=cache_cli.run)
    return parser


BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a reader that went away (`tapernn inspect | head -3`) ends it quietly."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not as a warning at interpreter exit
        return code
    except BrokenPipeError:
        _discard_stdout()
        return BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a non-file (e.g. under a test)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a one-line argument error already printed
        return e.code if isinstance(e.code, int) else 2
    interrupt.started()  # (until here, the commands' imports too: interrupt's one line)
    try:
        return int(args.run(args) or 0)
    except TapernnError as e:
        print(f"tapernn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ntapernn {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as e:  # (sizes no machine holds, e.g. --batch 99999999999: NumPy's
        # _ArrayMemoryError says how much for what shape)
        what = str(e) or "an array"
        print(
            f"tapernn {args.command}: error: out of memory: {what} (the sizes given need more "
            f"memory than this machine has)",
            file=sys.stderr,
        )
        return 1
    finally:
        interrupt.finished()  # (the teardown after it cannot run a handler: exit -2 otherwise)


if __name__ == "__main__":
    sys.exit(main())
