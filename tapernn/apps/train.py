"""`tapernn train`: a character-level LSTM language model on standard-library docstrings (or
--text FILE), with a progress bar, validation perplexity against the unigram baseline, samples,
checkpoints, exact resume and a clean Ctrl-C. This is its command line (add_arguments / run /
main for the CLI); the run itself is trainer.py, in one process or under MPI (distributed_train)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from .command_line import OneLineArgumentParser
from .trainer import DEFAULTS, PROG, run_single


def _number(
    kind: type, ok: Callable[[Any], bool], expected: str, must: str
) -> Callable[[str], Any]:
    """An argparse type: `kind(text)` where `ok` holds ("expected <expected>" when it does not
    parse, "must be <must>" when it is out of range)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {must}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _positive(kind: type) -> Callable[[str], Any]:
    return _number(
        kind, lambda v: 0 < v < math.inf, f"a positive {kind.__name__}", "positive and finite"
    )


_fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)", "in [0, 1)")
_non_negative = _number(float, lambda v: 0 <= v < math.inf, "a number", ">= 0 and finite")
_count = _number(int, lambda v: v >= 0, "an integer >= 0", ">= 0")  # (--seed, --sample-len)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `train` options to `parser` (the CLI's subcommand parser or a standalone one)."""
    d = DEFAULTS
    model = parser.add_argument_group("model and data (taken from the checkpoint with --resume)")
    add = model.add_argument
    add(
        "--text",
        metavar="FILE",
        help="UTF-8 text to train on (default: the docstrings of the "
        "Python standard library, collected from source and cached)",
    )
    add(
        "--cell",
        "--model",
        metavar="CELL",
        help=f"(--model is an alias) lstm | fastlstm | gru | rnn | seqlstm | seqgru (the "
        f"tensor modules SeqLSTM, SeqGRU) | module:Class (an importable nn.Cell subclass taking "
        f"(input_size, hidden_size)); default {d['cell']}",
    )
    add("--layers", type=_positive(int), help=f"stacked recurrent layers (default {d['layers']})")
    add("--hidden", type=_positive(int), help=f"hidden size (default {d['hidden']})")
    add("--embed", type=_positive(int), help=f"character embedding size (default {d['embed']})")
    add(
        "--seq-len", type=_positive(int), help=f"BPTT length in characters (default {d['seq_len']})"
    )
    add("--batch", type=_positive(int), help=f"parallel streams per batch (default {d['batch']})")
    add("--dropout", type=_fraction, help=f"dropout after each layer (default {d['dropout']})")
    add("--lr", type=_positive(float), help=f"learning rate (default {d['lr']})")
    add("--optim", choices=("sgd", "adam"), help=f"optimiser (default {d['optim']})")
    add(
        "--clip",
        type=_non_negative,
        help=f"max global gradient norm, 0 = off (default {d['clip']})",
    )
    add("--dtype", choices=("float32", "float64"), help=f"default {d['dtype']}")
    add(
        "--remember",
        action=argparse.BooleanOptionalAction,
        help="carry the hidden state across "
        "batches (truncated BPTT); --no-remember starts every batch from zeros (default: remember)",
    )
    add("--seed", type=_count, help=f"seed of the library generator (default {d['seed']})")
    add(
        "--loss",
        choices=("ce", "nce"),
        help="ce: full softmax cross-entropy; nce: noise-"
        "contrastive estimation (NCEModule/NCECriterion, --k noise samples from the training "
        "unigrams, Z fixed at 1); the loss shown while training is then the NCE loss, the "
        f"validation perplexity stays exact (full softmax) (default {d['loss']})",
    )
    add("--k", type=_positive(int), help=f"NCE noise samples per chunk (default {d['k']})")
    run_group = parser.add_argument_group("run")
    add = run_group.add_argument
    add(
        "--epochs",
        type=_positive(int),
        help="passes over the training text (default 1 unless --steps is given)",
    )
    add(
        "--steps",
        type=_positive(int),
        help="stop after this many updates in total (counting "
        "those before --resume); with --epochs, whichever comes first",
    )
    add(
        "--checkpoint",
        metavar="DIR",
        help="save model, optimiser and position here each epoch, at the end and on Ctrl-C",
    )
    add("--resume", action="store_true", help="continue the run saved in --checkpoint DIR")
    add(
        "--force",
        action="store_true",
        help="start a new run even though --checkpoint DIR holds "
        "a checkpoint (replaced at this run's first save; default: refuse)",
    )
    add(
        "--temperature",
        type=_positive(float),
        default=0.8,
        help="sampling temperature (default 0.8)",
    )
    add(
        "--sample-len",
        type=_count,
        default=200,
        help="characters per sample, 0 = none (default 200)",
    )
    add(
        "--threads",
        type=_positive(int),
        default=1,
        help="BLAS threads (default 1: this model's "
        "matrices are too small to gain from more, and extra threads slow it down several times)",
    )
    add("--no-progress", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits for --help and errors; callers want the code
        return int(e.code or 0)
    return run(args)


def run(args: argparse.Namespace, distributed: bool | None = None) -> int:
    """Train as `args` says; returns the exit code (0, 2 for bad input, 130 on Ctrl-C). Under an
    MPI launcher with several processes (`mpiexec -n N`), trains data-parallel on all of them."""
    if distributed is None:
        from .distributed import launched_by_mpi

        distributed = launched_by_mpi()
    if distributed:
        from .distributed_train import run_distributed

        return run_distributed(args)
    return run_single(args)
