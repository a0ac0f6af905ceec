"""The training run behind `tapernn train`: options resolved against a checkpoint, data, model,
optimiser, the loop with validation, samples, checkpoints and a clean Ctrl-C. Shared by the
single-process command (train.py) and the MPI trainer (distributed_train.py), which import it."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any, Self

import numpy as np

from .. import optim
from .. import random as tn_random
from ..blas import blas_threads
from ..errors import TapernnError
from .charlm import CellSpecError, CharLM, resolve_cell, unigram_nll
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    ensure_writable,
    has_checkpoint,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from .data import (
    Vocabulary,
    read_text_file,
    split_train_validation,
    stdlib_docstrings,
    time_major_batches,
)
from .data.corpus import CorpusError

PROG = "tapernn train"
# options that define the model, data and optimiser: a resumed run takes them from the checkpoint
# (sized so `--steps 300` takes about a minute on 2 cores and reaches perplexity ~6 vs ~24 unigram)
DEFAULTS: dict[str, Any] = {
    "text": None,
    "cell": "fastlstm",
    "layers": 1,
    "hidden": 256,
    "embed": 64,
    "seq_len": 32,
    "batch": 32,
    "dropout": 0.0,
    "lr": 5e-3,
    "optim": "adam",
    "clip": 5.0,
    "dtype": "float64",
    "remember": True,
    "seed": 1,
    "loss": "ce",
    "k": 25,
}
INTERRUPTED = 130  # the shell's code for SIGINT


class UsageError(Exception):
    """A bad option value found after parsing; reported as `tapernn train: error: ...`, exit 2."""


def run_single(args: argparse.Namespace) -> int:
    """Train in this process as `args` says; returns the exit code (0, 2 for bad input, 1 for a
    library error, 130 on Ctrl-C)."""
    try:
        with blas_threads(args.threads):
            return Trainer(args).fit()
    except (UsageError, CorpusError, CellSpecError, CheckpointError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except TapernnError as e:
        print(f"{PROG}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print(f"{PROG}: interrupted", file=sys.stderr)
        return INTERRUPTED


def resolve_options(args: argparse.Namespace) -> tuple[dict, Checkpoint | None]:
    """Merge command line, checkpoint and defaults. Returns (options, verified checkpoint)."""
    given = {k: getattr(args, k, None) for k in DEFAULTS}
    if given["text"] is not None:  # absolute: a resume from another directory finds the same file
        given["text"] = os.path.abspath(given["text"])
    saved = None
    if args.resume:
        if not args.checkpoint:
            raise UsageError("--resume needs --checkpoint DIR")
        saved = load_checkpoint(args.checkpoint)
        for key, value in given.items():
            if value is not None and value != saved.config["options"].get(key, DEFAULTS[key]):
                raise UsageError(
                    f"--{key.replace('_', '-')} {value} differs from the checkpoint's "
                    f"{saved.config['options'][key]}; drop it to resume, or start a "
                    f"new run"
                )
        options = {**DEFAULTS, **saved.config["options"]}  # (older checkpoints: no loss/k)
    else:
        if args.checkpoint and has_checkpoint(args.checkpoint) and not args.force:
            raise UsageError(
                f"{args.checkpoint!r} already holds the checkpoint of a run"
                f"{_step_of(args.checkpoint)}; continue it with --resume, or "
                f"overwrite it with --force"
            )
        options = {k: DEFAULTS[k] if v is None else v for k, v in given.items()}
    if args.sample_len < 0:
        raise UsageError(f"--sample-len must be >= 0, got {args.sample_len}")
    if args.checkpoint:
        ensure_writable(args.checkpoint)
    return options, saved


def _step_of(directory: str) -> str:
    try:
        return f" (step {load_checkpoint(directory).step})"
    except TapernnError:
        return " (unreadable)"


def _notice(text: str) -> None:
    """Write from a signal handler: straight to the descriptor (the handler may run inside a
    write to sys.stderr, whose buffer refuses a reentrant call), else through sys.stderr."""
    try:
        os.write(sys.stderr.fileno(), text.encode())
    except (OSError, ValueError, AttributeError):  # (no descriptor: a captured stream)
        sys.stderr.write(text)


class StopRequest:
    """First Ctrl-C: finish the current step, save, exit (and say so: a step may be long). Second:
    abort at once -- unless it comes while that save is written (`hold`): it then ends the run
    after the save, which would otherwise be lost to a quick double Ctrl-C."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._holding = False

    def __enter__(self) -> Self:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: keep the default behaviour
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if self._holding:
                return  # (the run ends when the save is written)
            raise KeyboardInterrupt
        self.requested = True
        _notice(f"\n{PROG}: stopping after this step (Ctrl-C again to abort at once)\n")

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """A second Ctrl-C inside waits for the block's end (the interrupted run's save)."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def __call__(self) -> bool:
        return self.requested


class Trainer:
    """One training run: data, model, optimiser and position, built from parsed arguments."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.bar = None  # the progress bar while training (messages go around it)
        self.options, saved = resolve_options(args)
        opts = self.options
        cell = resolve_cell(opts["cell"])
        self._load_data(saved)
        tn_random.manual_seed(opts["seed"])  # before building: initialisation draws from it
        self.lm = CharLM(
            len(self.vocab),
            cell,
            opts["layers"],
            opts["embed"],
            opts["hidden"],
            opts["dropout"],
            opts["remember"],
            opts["dtype"],
        )
        if opts["loss"] == "nce":
            counts = np.bincount(np.ravel(self.train_y), minlength=len(self.vocab))
            self.lm.use_nce(opts["k"], counts.astype(np.float64))
        params = self.lm.parameters()
        self.optimizer = (
            optim.Adam(params, lr=opts["lr"])
            if opts["optim"] == "adam"
            else optim.SGD(params, lr=opts["lr"])
        )
        self.step = 0
        if saved is not None:
            restore_checkpoint(saved, self.lm, self.optimizer)
            self.step = saved.step
        self.losses: list[float] = []  # this session's per-step training losses
        self.validation: list[tuple[int, float]] = []  # (step, perplexity)
        self.total = self._target_steps()

    def _load_data(self, saved: Checkpoint | None) -> None:
        opts = self.options
        text = (
            read_text_file(opts["text"])
            if opts["text"]
            else stdlib_docstrings(
                on_collect=lambda: self.say(
                    "collecting standard-library docstrings (cached for next time)..."
                )
            )
        )
        self.corpus_name = opts["text"] or "Python standard-library docstrings"
        self.text_digest = _digest(text)
        if saved is not None and saved.config["text_digest"] != self.text_digest:
            raise UsageError(
                f"the text of {self.corpus_name!r} changed since the checkpoint was "
                f"saved; resuming on other data would not continue the run"
            )
        train_text, val_text = split_train_validation(text)
        self.vocab = Vocabulary.from_text(train_text)
        self.n_chars = (len(train_text), len(val_text))
        batch, seq_len = opts["batch"], opts["seq_len"]
        if len(train_text) < batch * seq_len + 1:
            # time_major_batches would count the training part alone: say what it is.
            raise CorpusError(
                f"{self.corpus_name!r} has {len(text)} characters; its training part (all but "
                f"the last {len(val_text)}, held out for validation) has {len(train_text)}, "
                f"too few for --batch {batch} x --seq-len {seq_len}: need at least "
                f"{batch * seq_len + 1}; use a longer text or a smaller --batch / --seq-len"
            )
        self.train_x, self.train_y = time_major_batches(
            self.vocab.encode(train_text), batch, seq_len
        )
        if len(val_text) < seq_len + 1:
            raise CorpusError(
                f"the validation split has {len(val_text)} characters, too few for "
                f"--seq-len {seq_len}; use a longer text or a shorter --seq-len"
            )
        val_batch = min(batch, (len(val_text) - 1) // seq_len)
        self.val_x, self.val_y = time_major_batches(self.vocab.encode(val_text), val_batch, seq_len)
        self.unigram_ppl = float(np.exp(unigram_nll(self.train_y, self.val_y, len(self.vocab))))

    def _target_steps(self) -> int:
        steps, epochs = self.args.steps, self.args.epochs
        if steps is None and epochs is None:
            epochs = 1
        limits = [s for s in (steps, None if epochs is None else epochs * len(self.train_x)) if s]
        return min(limits)

    # ---- the run ---------------------------------------------------------------------------------

    def fit(self) -> int:
        started, first_step = time.perf_counter(), self.step
        if self.step >= self.total:
            self.say(
                f"nothing to do: the checkpoint is at step {self.step} and this run stops at "
                f"step {self.total} (--steps and --epochs count from the start of the run)"
            )
            return 0
        with self.stop_request() as stop:  # installed first: a Ctrl-C from here on saves cleanly
            self._stop = stop
            self._print_header()
            self._train(stop)
            if stop.requested:
                return self._interrupted()
            if self.step % len(self.train_x) or self.step == first_step:
                self._save()  # before evaluating: the checkpoint is the state training continues from
                self._evaluate(stop, "end")
        elapsed = time.perf_counter() - started
        self.say(self._summary(first_step, elapsed))
        return INTERRUPTED if stop.requested else 0

    def stop_request(self) -> StopRequest:
        return StopRequest()  # (distributed_train: one all ranks agree on)

    def _train(self, stop: StopRequest) -> None:
        from tqdm import tqdm  # imported here: `tapernn --help` should not pay for it

        n_batches, tokens = len(self.train_x), self.train_x[0].size
        self.bar = tqdm(
            total=self.total,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=self.args.no_progress,
            file=sys.stderr,
        )
        rate = None
        try:
            while self.step < self.total and not stop.requested:
                k = self.step % n_batches
                tick = time.perf_counter()
                loss = self.lm.train_step(
                    self.train_x[k], self.train_y[k], self.optimizer, self.options["clip"]
                )
                speed = tokens / max(time.perf_counter() - tick, 1e-9)
                rate = self._record_step(loss, speed, rate, n_batches, stop)
        finally:
            self.bar.close()
            self.bar = None

    def _record_step(
        self, loss: float, speed: float, rate: float | None, n_batches: int, stop: StopRequest
    ) -> float:
        """Log one finished step (loss, smoothed tokens/s on the bar); validate and save at an
        epoch's end. Returns the smoothed rate."""
        rate = speed if rate is None else 0.9 * rate + 0.1 * speed  # smooth the jitter
        self.losses.append(float(loss))
        self.step += 1
        self.bar.set_postfix(
            loss=f"{np.mean(self.losses[-20:]):.3f}", tok_s=f"{rate:,.0f}", refresh=False
        )
        self.bar.update(1)
        if self.step % n_batches == 0 and not stop.requested:
            self._evaluate(stop, f"epoch {self.step // n_batches}")
            self._save()
        return rate

    def _report_validation(self, nll: float, label: str) -> None:
        """Record and print the validation perplexity of mean NLL `nll`."""
        ppl = float(np.exp(nll))
        self.validation.append((self.step, ppl))
        recent = f"train loss {np.mean(self.losses[-50:]):.3f}, " if self.losses else ""
        self.say(
            f"{label} (step {self.step}): {recent}validation perplexity {ppl:.2f} "
            f"(unigram baseline {self.unigram_ppl:.2f})"
        )

    def _evaluate(self, stop: StopRequest, label: str) -> None:
        nll = self.lm.mean_nll(self.val_x, self.val_y, stop)
        if stop.requested:
            return
        self._report_validation(nll, label)
        if self.args.sample_len > 0:
            self.say(f"--- sample, temperature {self.args.temperature} ---\n{self._sample()}\n---")

    def _sample(self) -> str:
        prime = self.vocab.encode("\n")
        prime = prime if prime[0] != self.vocab.unk else self.val_x[0, :1, 0]
        # a generator of its own, seeded by (seed, step): samples are reproducible and drawing
        # them never shifts the training random stream
        rng = np.random.default_rng([self.options["seed"], self.step])
        ids = self.lm.sample(list(prime), self.args.sample_len, self.args.temperature, rng)
        return self.vocab.decode(ids)

    def _save(self) -> None:
        if not self.args.checkpoint:
            return
        save_checkpoint(
            self.args.checkpoint,
            self.lm,
            self.optimizer,
            {
                "options": self.options,
                "vocab": self.vocab.chars,
                "text_digest": self.text_digest,
                "step": self.step,
                "epoch": self.step // len(self.train_x),
                "batch_in_epoch": self.step % len(self.train_x),
                "last_loss": self.losses[-1] if self.losses else None,
            },
        )

    def _interrupted(self) -> int:
        with self._stop.hold():
            self._save()
        where = (
            f"checkpoint saved to {self.args.checkpoint} (continue with --resume)"
            if self.args.checkpoint
            else "no --checkpoint given, nothing saved"
        )
        print(f"{PROG}: interrupted at step {self.step}; {where}", file=sys.stderr)
        return INTERRUPTED

    # ---- reporting ---------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.bar is not None and not self.args.no_progress:
            self.bar.write(text)  # keeps the progress bar on its own line
        else:
            print(text, flush=True)

    def _print_header(self) -> None:
        o = self.options
        cell = o["cell"] if ":" in o["cell"] else o["cell"].lower()
        self.say(
            f"corpus: {self.corpus_name}: {self.n_chars[0]:,} training + {self.n_chars[1]:,} "
            f"validation characters, vocabulary {len(self.vocab) - 1} + <unk>"
        )
        self.say(
            f"model: {o['layers']} x {cell}, embed {o['embed']}, hidden {o['hidden']}, "
            f"{self.lm.n_parameters():,} parameters ({o['dtype']}); {o['optim']} lr {o['lr']}; "
            f"batch {o['batch']} x seq-len {o['seq_len']}, {len(self.train_x)} batches/epoch"
        )
        start = f"resuming at step {self.step}, " if self.step else ""
        self.say(
            f"{start}training to step {self.total}; unigram baseline validation perplexity "
            f"{self.unigram_ppl:.2f}"
        )

    def _summary(self, first_step: int, elapsed: float) -> str:
        done = self.step - first_step
        losses = _loss_trend(self.losses)
        ppl = (
            f"; validation perplexity {self.validation[-1][1]:.2f} vs unigram "
            f"{self.unigram_ppl:.2f}"
            if self.validation
            else ""
        )
        return f"done: {done} steps in {elapsed:.1f} s{losses}{ppl}"


def _loss_trend(losses: list[float]) -> str:
    """Mean training loss of the first and last (up to) 10 steps; the windows never overlap."""
    if not losses:
        return ""
    k = min(10, len(losses) // 2)
    if k == 0:
        return f"; train loss {losses[0]:.3f} (1 step)"
    return (
        f"; train loss {np.mean(losses[:k]):.3f} (first {k}) -> "
        f"{np.mean(losses[-k:]):.3f} (last {k})"
    )


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode("utf-8")).hexdigest()
