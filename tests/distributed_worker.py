"""Run by tests/test_distributed.py, alone or under `mpiexec -n N`: trains the char LM with the
`tapernn train` options given after `--`, then writes this rank's parameters, remembered state
and shard to OUT/rank<r>.npz. `--fail STEP:RANK:HOW` makes that rank die (kill), hang, or raise
at that step, to check that the job ends instead of waiting forever; with `--cli` the run goes
through `tapernn train`'s own error handling instead of an uncaught exception (the excepthook)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np


def main() -> int:
    if sys.argv[1] == "collectives":
        return collectives(sys.argv[2])
    cut = sys.argv.index("--")
    own = argparse.ArgumentParser()
    own.add_argument("out")
    own.add_argument("--fail", default=None)
    own.add_argument("--cli", action="store_true")
    opts = own.parse_args(sys.argv[1:cut])
    if opts.cli:
        return failing_cli(sys.argv[cut + 1 :], opts.fail)
    return train_and_dump(opts.out, sys.argv[cut + 1 :], opts.fail)


def collectives(out: str) -> int:
    """allreduce_gradients (in-place and packed buckets, float64 and float32, this rank's weight),
    broadcast_parameters and the object collectives on a model whose values depend on the rank;
    writes what this rank ends with to OUT/coll<r>.npz."""
    from tapernn import nn
    from tapernn.apps import distributed as dist

    dist.init()
    r = dist.rank()
    linear = nn.Linear(4, 5).astype("float32")  # two dtypes: one packed bucket per dtype
    model = nn.Sequential(nn.LSTM(3, 4), linear)  # LSTM: parameter blocks; Linear: loose arrays
    params = model.parameters()
    for k, p in enumerate(params):
        p.data[...] = np.random.default_rng([r, k]).standard_normal(p.data.shape)
        p.grad[...] = np.random.default_rng([r, k, 1]).standard_normal(p.grad.shape)
    before = {f"grad{k}": p.grad.copy() for k, p in enumerate(params)}
    weight = (r + 1) / 3  # ranks 0, 1 of 2: weights 1/3, 2/3
    dist.allreduce_gradients(params, weight=weight, bucket_bytes=400)  # some in place, some packed
    dist.broadcast_parameters(model)
    gathered = dist.allgather_object({"rank": r})
    told = dist.broadcast_object(f"from {r}", root=1)
    np.savez(
        os.path.join(out, f"coll{r}.npz"),
        weight=weight,
        gathered=np.array([g["rank"] for g in gathered]),
        told=np.array(told),
        **before,
        **{f"after{k}": p.grad for k, p in enumerate(params)},
        **{f"data{k}": p.data for k, p in enumerate(params)},
    )
    return 0


def failing_cli(argv: list[str], fail: str) -> int:
    """`tapernn train argv` with the failure armed when the trainer starts to fit."""
    from tapernn.apps.distributed_train import DistributedTrainer
    from tapernn.apps.train import main as train_main

    fit = DistributedTrainer.fit

    def failing_fit(trainer):
        _arm_failure(trainer, *fail.split(":"))
        return fit(trainer)

    DistributedTrainer.fit = failing_fit
    return train_main(argv)


def train_and_dump(out: str, argv: list[str], fail: str | None = None) -> int:
    """Train with the `tapernn train` options `argv`; write OUT/rank<r>.npz; the exit code."""
    from tapernn.apps import distributed as dist
    from tapernn.apps.cli import OneLineArgumentParser
    from tapernn.apps.train import add_arguments
    from tapernn.apps.trainer import Trainer

    parser = OneLineArgumentParser(prog="tapernn train")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if dist.launched_by_mpi():
        from tapernn.apps.distributed_train import DistributedTrainer

        dist.init()
        trainer = DistributedTrainer.create(args)
        assert not isinstance(trainer, int), "set-up failed"
    else:
        trainer = Trainer(args)
    if fail:
        _arm_failure(trainer, *fail.split(":"))
    snapshot = {}
    train = trainer._train

    def train_and_keep_the_state(stop):  # the final evaluation forgets it
        train(stop)
        snapshot["states"] = trainer.lm.remembered_states()

    trainer._train = train_and_keep_the_state
    code = trainer.fit()
    states = snapshot["states"]
    arrays = {f"param{k}": p.data for k, p in enumerate(trainer.lm.parameters())}
    arrays.update(
        {
            f"state{k}.{j}": a
            for k, st in enumerate(states)
            if st is not None
            for j, a in enumerate(st)
        }
    )
    rows = getattr(trainer, "rows", (0, trainer.options["batch"]))
    np.savez(
        os.path.join(out, f"rank{dist.rank()}.npz"),
        rows=np.array(rows),
        losses=np.array(trainer.losses),
        **arrays,
    )
    return code


def _arm_failure(trainer, step: str, rank: str, how: str) -> None:
    from tapernn.apps import distributed as dist

    if dist.rank() != int(rank):
        return
    train_step = trainer.lm.train_step

    def failing_step(*a, **k):
        if trainer.step == int(step):
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "hang":
                time.sleep(3600)
            raise RuntimeError(f"injected failure at step {step}")
        return train_step(*a, **k)

    trainer.lm.train_step = failing_step


if __name__ == "__main__":
    sys.exit(main())
