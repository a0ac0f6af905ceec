"""The `tapernn` command (also `python -m tapernn`): demo, train, graph, inspect, bench.
Errors in arguments or files print one line and exit with code 2."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import TapernnError


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help line says its default: appended unless the text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default is argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        if action.nargs == 0:  # a flag
            default = "on" if action.default else "off"
        elif action.default is None:
            default = "none"
        else:
            default = "%(default)s"
        return f"{text} (default: {default})" if text else f"default: {default}"


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; errors here are one line, exit code 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _demo(args: argparse.Namespace) -> int:
    from . import tutorial
    acceptor = tutorial.main()
    if args.diagram:
        try:
            from .export.rendering import render_or_source
        except ImportError:
            print("\n(diagram export is not available in this build)")
            return 0
        path, note = render_or_source(acceptor, args.diagram, level="module")
        print(f"\nWrote the acceptor's unrolled diagram to {path}")
        if note:
            print(note)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from . import random as tn_random
    from .models import build_model
    tn_random.manual_seed(args.seed)
    model, x, grad_out = build_model(args.model, args.steps, args.batch, args.hidden)
    if args.dtype == "float32":
        model.astype("float32")
    model.forward(x)
    model.backward(x, grad_out)
    print(f"{model.describe()}: T={args.steps}, B={args.batch}, H={args.hidden}, {args.dtype}")
    print(model.compile_report())
    return 0


def _lazy(module: str, what: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib
        try:
            mod = importlib.import_module(f"tapernn.{module}")
        except ImportError:
            raise TapernnError(f"`tapernn {what}` is not available in this build") from None
        return mod.run(args)
    return run


def _add_lazy_arguments(sub: argparse.ArgumentParser, module: str) -> bool:
    import importlib
    try:
        importlib.import_module(f"tapernn.{module}").add_arguments(sub)
        return True
    except ImportError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="tapernn", description="Torch7's rnn library on a graph-compiling NumPy autodiff.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"tapernn {__version__}")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = subs.add_parser("demo", help="the Element-RNN tutorial, step by step")
    demo.add_argument("--diagram", default="acceptor.svg",
                      help="where to write the acceptor's unrolled diagram ('' to skip)")
    demo.set_defaults(run=_demo)

    train = subs.add_parser("train", help="train a character-level LSTM language model")
    _add_lazy_arguments(train, "train")
    train.set_defaults(run=_lazy("train", "train"))

    graph = subs.add_parser("graph", help="write an unrolled diagram of a model")
    _add_lazy_arguments(graph, "export_cli")
    graph.set_defaults(run=_lazy("export_cli", "graph"))

    inspect = subs.add_parser("inspect", help="print a model's compile report")
    inspect.add_argument("--model", default="lstm",
                         help="lstm|fastlstm|gru|rnn|stacked|tutorial-acceptor|tutorial-transducer "
                              "or path.to.module:factory")
    inspect.add_argument("--steps", type=_positive, default=10, help="timesteps to unroll")
    inspect.add_argument("--batch", type=_positive, default=4, help="batch size")
    inspect.add_argument("--hidden", type=_positive, default=32, help="feature/hidden size")
    inspect.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                         help="floating-point type of parameters and data")
    inspect.add_argument("--seed", type=int, default=0, help="seed of the library generator")
    inspect.set_defaults(run=_inspect)

    bench = subs.add_parser("bench", help="speed and memory against a hand-written NumPy LSTM")
    _add_lazy_arguments(bench, "benchmark")
    bench.set_defaults(run=_lazy("benchmark", "bench"))
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a one-line argument error already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.run(args) or 0)
    except TapernnError as e:
        print(f"tapernn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ntapernn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
