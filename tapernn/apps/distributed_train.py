"""`mpiexec -n N tapernn train ...`: the char-LM trainer on N MPI ranks. Each rank trains on its
slice of the B batch streams, gradients are averaged so N ranks equal one process on B rows, and
rank 0 alone logs, samples and writes checkpoints (which hold all B rows: resume under any N)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from .. import random as tn_random
from ..blas import blas_threads
from ..errors import TapernnError
from . import distributed as dist
from .charlm import CellSpecError
from .checkpoint import CheckpointError
from .data.corpus import CorpusError
from .trainer import (
    DEFAULTS,
    INTERRUPTED,
    PROG,
    StopRequest,
    Trainer,
    UsageError,
    run_single,
)

SETUP_ERRORS = (UsageError, CorpusError, CellSpecError, CheckpointError)


def run_distributed(args: argparse.Namespace) -> int:
    """`tapernn train` under an MPI launcher with more than one process; returns the exit code.

    Set-up errors (bad options, data, checkpoint) are agreed on by all ranks and reported once
    by rank 0; an error or a dead rank during training aborts the whole job (non-zero exit)."""
    try:
        comm = dist.init()
    except dist.DistributedError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if comm.Get_size() == 1:
        return run_single(args)
    try:
        with blas_threads(args.threads):
            trainer = DistributedTrainer.create(args)
            if isinstance(trainer, int):
                return trainer
            return trainer.fit()
    except KeyboardInterrupt:
        dist.abort("interrupted", INTERRUPTED)
    except Exception as e:  # noqa: BLE001  # the other ranks wait on this one: end them all
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        dist.abort(f"{PROG}: error: {type(e).__name__}: {message}", 1)
    return 1


def _build(cls: type, args: argparse.Namespace, checkpoint_dir: str | None) -> tuple:
    """(trainer, None), or (None, (exit code, one-line message)) for a set-up error."""
    try:
        return cls(args, checkpoint_dir), None
    except (TapernnError, *SETUP_ERRORS) as e:
        code = 2 if isinstance(e, SETUP_ERRORS) else 1
        return None, (code, str(e).splitlines()[0] if str(e) else type(e).__name__)


def _report(failure: tuple[int, str], of_rank: int | None = None) -> int:
    """Rank 0 prints a set-up error every rank agreed on; all return its exit code."""
    if dist.rank() == 0:
        where = "" if of_rank is None else f"rank {of_rank}: "
        print(f"{PROG}: error: {where}{failure[1]}", file=sys.stderr)
    return failure[0]


def _follower_args(args: argparse.Namespace, options: dict) -> argparse.Namespace:
    """Rank 0's resolved options as a command line for the other ranks: they build the same
    model without reading the checkpoint, then receive its state from rank 0."""
    out = argparse.Namespace(**vars(args))
    for key in DEFAULTS:
        setattr(out, key, options[key])
    out.resume, out.checkpoint = False, None
    return out


class AgreedStop(StopRequest):
    """Ctrl-C on a rank sets `pending` there; `requested` changes only where all ranks combine
    their flags (after each step, after evaluating), so every rank stops after the same step and
    takes the same path (save, message) from there. A second Ctrl-C aborts the job."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True


class DistributedTrainer(Trainer):
    """A Trainer whose data is this rank's shard of the batch streams and whose optimizer step
    averages gradients over all ranks (dist.DistributedOptimizer, clipping after averaging)."""

    @classmethod
    def create(cls, args: argparse.Namespace) -> DistributedTrainer | int:
        """Build on every rank, or return the exit code of a set-up error (printed by rank 0)."""
        leader = dist.rank() == 0
        trainer, failure = None, None
        if leader:  # rank 0 alone reads the checkpoint: it need not be on a shared file system
            trainer, failure = _build(cls, args, args.checkpoint)
        failure, options = dist.broadcast_object(
            (failure, None if trainer is None else trainer.options), what="starting up"
        )
        if failure is None and options["batch"] < dist.world_size():
            n = dist.world_size()
            failure = (
                2,
                (
                    f"--batch {options['batch']} gives fewer streams than the {n} ranks; "
                    f"use --batch {n} or more"
                ),
            )
        if failure is not None:
            return _report(failure)
        if not leader:
            trainer, failure = _build(cls, _follower_args(args, options), args.checkpoint)
        reports = dist.allgather_object(
            (failure, None if trainer is None else trainer.text_digest), what="starting up"
        )
        for r, (fail, digest) in enumerate(reports):
            if fail is None and digest != reports[0][1]:
                fail = (
                    2,
                    (
                        "the training text differs from rank 0's (every host must read the "
                        "same file)"
                    ),
                )
            if fail is not None:
                return _report(fail, r)
        trainer._synchronize_start()
        return trainer

    def __init__(self, args: argparse.Namespace, checkpoint_dir: str | None):
        self.checkpoint_dir = checkpoint_dir
        self.rank, self.size = dist.rank(), dist.world_size()
        super().__init__(args)

    def _synchronize_start(self) -> None:
        """Rank 0's parameters, optimizer state, position and remembered state on every rank;
        then each rank keeps its own rows of the batch streams and of the remembered state."""
        lm, opts = self.lm, self.options
        dist.broadcast_parameters(lm.parameters())
        start = dist.broadcast_object(
            (self.step, self.optimizer.state_dict(), lm.remembered_states()),
            what="broadcasting the start state",
        )
        self.step, optimizer_state, full_states = start
        self.optimizer.load_state_dict(optimizer_state)
        if self.rank > 0:  # dropout masks: a stream of each rank's own, reproducible from the seed
            tn_random.manual_seed(
                int(
                    np.random.SeedSequence([opts["seed"], self.rank, self.step]).generate_state(1)[
                        0
                    ]
                )
            )
        self.global_batch = opts["batch"]
        self.rows = dist.shard(self.global_batch)
        lo, hi = self.rows
        self.weight = (hi - lo) / self.global_batch
        lm.restore_states(
            [
                None if st is None else tuple(_rows(a, lo, hi, self.global_batch) for a in st)
                for st in full_states
            ]
        )
        self.train_x, self.train_y = (_columns(a, lo, hi) for a in (self.train_x, self.train_y))
        n_val = self.val_x.shape[2]
        self.val_rows = dist.shard(n_val)
        self.val_weight = (self.val_rows[1] - self.val_rows[0]) / n_val
        self.val_x, self.val_y = (_columns(a, *self.val_rows) for a in (self.val_x, self.val_y))
        self.dist_optimizer = dist.DistributedOptimizer(self.optimizer, opts["clip"], self.weight)

    # ---- the run ---------------------------------------------------------------------------------

    def fit(self) -> int:
        self.train_seconds, self.train_tokens = 0.0, 0
        return super().fit()

    def stop_request(self) -> AgreedStop:
        return AgreedStop()

    def _train(self, stop: AgreedStop) -> None:
        from tqdm import tqdm

        n_batches = len(self.train_x)
        tokens = self.train_x.shape[1] * self.global_batch  # the whole job's, per step
        self.bar = tqdm(
            total=self.total,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=self.args.no_progress or self.rank > 0,
            file=sys.stderr,
        )
        rate = None
        try:
            while self.step < self.total and not stop.requested:
                k = self.step % n_batches
                traces = self._traces()
                tick = time.perf_counter()
                loss = self.lm.train_step(self.train_x[k], self.train_y[k], self.dist_optimizer, 0)
                # the global batch's loss, and whether any rank was asked to stop: all ranks
                # finish this step and then stop together
                loss, stops = dist.allreduce_values(
                    [self.weight * loss, float(stop.pending)],
                    f"combining the loss of step {self.step}",
                )
                stop.requested = stops > 0
                seconds = time.perf_counter() - tick
                if self._traces() == traces:  # steps that compiled do not count in the speed
                    self.train_seconds += seconds
                    self.train_tokens += tokens
                rate = self._record_step(loss, tokens / max(seconds, 1e-9), rate, n_batches, stop)
        finally:
            self.bar.close()
            self.bar = None

    def _traces(self) -> int:
        return sum(m.trace_count for m in self.lm.model.modules())

    def _evaluate(self, stop: AgreedStop, label: str) -> None:
        """Validation perplexity over all ranks' shares of the validation streams; the sample and
        the message come from rank 0. Every rank ends with its state forgotten, as one process."""
        if self.val_x.shape[2] > 0:
            nll = self.lm.mean_nll(self.val_x, self.val_y, lambda: stop.pending)
        else:  # more ranks than validation streams: nothing to score, but forget alike
            nll = 0.0
            self.lm.model.evaluate()
            self.lm.model.training()
        nll, stops = dist.allreduce_values(
            [self.val_weight * nll, float(stop.pending)], "combining the validation loss"
        )
        stop.requested = stops > 0
        if stop.requested:
            return
        self._report_validation(nll, label)
        if self.rank == 0 and self.args.sample_len > 0:
            self.say(f"--- sample, temperature {self.args.temperature} ---\n{self._sample()}\n---")
        elif self.args.sample_len > 0:
            self.lm.model.forget()  # sampling forgets rank 0's state; every rank does the same

    def _save(self) -> None:
        """Rank 0 writes all B rows of the remembered state (gathered from the ranks) with the
        checkpoint code of a single process: the checkpoint does not depend on N."""
        if not self.checkpoint_dir:
            return
        local = self.lm.remembered_states()
        gathered = dist.allgather_object(local, what="gathering the state for a checkpoint")
        if self.rank > 0:
            return
        full = []
        for k, parts in enumerate(zip(*gathered)):  # cell k's state on each rank
            if all(st is None for st in parts):
                full.append(None)
            elif any(st is None for st in parts):
                raise dist.DistributedError(
                    f"ranks disagree on whether cell {k} remembers a state; cannot checkpoint"
                )
            else:
                full.append(tuple(np.concatenate(arrays, axis=0) for arrays in zip(*parts)))
        self.lm.restore_states(full)
        try:
            super()._save()
        finally:
            self.lm.restore_states(local)

    def _interrupted(self) -> int:
        self._save()
        if self.rank == 0:
            where = (
                f"checkpoint saved to {self.checkpoint_dir} (continue with --resume)"
                if self.checkpoint_dir
                else "no --checkpoint given, nothing saved"
            )
            print(f"{PROG}: interrupted at step {self.step}; {where}", file=sys.stderr)
        return INTERRUPTED

    # ---- reporting (rank 0) -------------------------------------------------------------------

    def say(self, text: str) -> None:
        if dist.rank() == 0:
            super().say(text)

    def _print_header(self) -> None:
        super()._print_header()
        lo, hi = self.rows
        self.say(
            f"distributed: {self.size} MPI ranks, rank 0 on streams {lo}..{hi - 1} of "
            f"{self.global_batch}; gradients averaged each step "
            f"({sum(p.data.nbytes for p in self.lm.parameters()):,} bytes)"
        )

    def _summary(self, first_step: int, elapsed: float) -> str:
        if not self.train_seconds:  # every step compiled (a very short run)
            return f"{super()._summary(first_step, elapsed)}; {self.size} ranks"
        speed = self.train_tokens / self.train_seconds
        return (
            f"{super()._summary(first_step, elapsed)}; {speed:,.0f} tokens/s over "
            f"{self.size} ranks (steps that compiled left out)"
        )


def _columns(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.ascontiguousarray(a[:, :, lo:hi])  # (n, T, B) -> this rank's streams


def _rows(state: Any, lo: int, hi: int, batch: int) -> np.ndarray:
    state = np.asarray(state)
    if state.ndim == 0 or state.shape[0] != batch:
        raise CheckpointError(
            f"a remembered state has shape {state.shape}; expected {batch} rows "
            f"(one per batch stream) to split among the ranks"
        )
    return np.ascontiguousarray(state[lo:hi])
