"""tapernn.apps.distributed and `mpiexec -n 2 tapernn train`: 2 ranks on half a batch each equal one
process on the whole batch (float64, 1e-12), ranks stay identical, rank-0 checkpoints resume under
any N, a dead, hung or failing rank ends the job non-zero, and a missing mpi4py names the extra.
The MPI runs are subprocesses under a timeout (tests/distributed_worker.py)."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from distributed_worker import train_and_dump

from tapernn import nn
from tapernn.apps import distributed as dist
from tapernn.apps.checkpoint import load_checkpoint
from tapernn.apps.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "distributed_worker.py")
LIMIT = 120  # seconds any one launch may take before the test fails (instead of hanging CI)
needs_mpiexec = pytest.mark.skipif(
    dist.find_mpiexec() is None, reason='mpiexec is not installed (pip install "tapernn[mpi]")'
)
TINY = [
    "--hidden",
    "12",
    "--embed",
    "6",
    "--seq-len",
    "6",
    "--sample-len",
    "0",
    "--no-progress",
    "--lr",
    "0.01",
    "--clip",
    "0.1",
]  # below every gradient norm: clipped after averaging


def word_text(n_lines: int, seed: int = 0) -> str:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "cats"]
    rnd = random.Random(seed)
    return "\n".join(" ".join(rnd.choice(words) for _ in range(8)) for _ in range(n_lines))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text(word_text(8), encoding="utf-8")  # ~ 8 batches/epoch: runs cross an epoch end
    return path


def launch(n: int, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`argv` (after the interpreter) alone (n = 0) or under `mpiexec -n n`, within LIMIT."""
    prefix = [] if n == 0 else dist.launcher_command(n)
    environment = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        prefix + [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=LIMIT,
        env=environment,
        cwd=ROOT,
        check=False,
    )


def train(n: int, *argv: str) -> str:
    """`tapernn train argv` under `mpiexec -n n`, or in this process for n = 0; its stdout."""
    if n == 0:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert train_main(list(argv)) == 0
        return out.getvalue()
    done = launch(n, ["-m", "tapernn", "train", *argv])
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def worker(n: int, out: Path, argv: list[str], fail: str | None = None, env=None):
    """tests/distributed_worker.py under `mpiexec -n n`, or in this process for n = 0."""
    out.mkdir(exist_ok=True)
    if n == 0:
        with contextlib.redirect_stdout(io.StringIO()):
            return subprocess.CompletedProcess([], train_and_dump(str(out), argv), "", "")
    extra = [] if fail is None else ["--fail", fail]
    return launch(n, [WORKER, str(out), *extra, "--", *argv], env)


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def assert_close(a: dict, b: dict, tol: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for k, value in a.items():
        assert value.shape == b[k].shape, k
        if value.size:
            assert np.max(np.abs(value - b[k])) <= tol, (k, np.max(np.abs(value - b[k])))


# ---- without MPI processes --------------------------------------------------------------------


def test_shard_covers_the_batch_in_rank_order_with_near_equal_sizes():
    for n in (1, 2, 5, 7, 32):
        for size in range(1, n + 1):
            rows = [dist.shard(n, r, size) for r in range(size)]
            assert rows[0][0] == 0 and rows[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))
            sizes = [hi - lo for lo, hi in rows]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    with pytest.raises(dist.DistributedError, match="rank 2 of size 2"):
        dist.shard(4, 2, 2)


def test_buckets_cover_every_gradient_once_large_blocks_in_place():
    lstm = nn.LSTM(40, 60)  # its 12 gate parameters live in 3 blocks
    model = nn.Sequential(
        nn.LookupTable(50, 40), nn.Sequencer(lstm), nn.Sequencer(nn.Linear(60, 50))
    )
    params = model.parameters()
    buckets = dist.plan_buckets(params, bucket_bytes=8 * 2000)
    covered = [a for b in buckets for a in b.arrays]
    grads = [p.grad for p in params]
    # every parameter's gradient lies in exactly one bucket array, and nothing else does
    for g in grads:
        assert sum(np.shares_memory(g, a) for a in covered) == 1
    assert sum(a.size for a in covered) == sum(g.size for g in grads)
    in_place = [b for b in buckets if b.in_place]
    assert in_place and all(b.arrays[0].nbytes >= 8 * 2000 for b in in_place)
    assert len(buckets) < len(params)  # blocks and packing: fewer reductions than parameters
    lstm_block = lstm.parameters()[0]._block  # W_i W_f W_o W_c rows: one array
    assert any(b.arrays[0] is lstm_block.grad for b in in_place)


def test_allreduce_alone_scales_by_the_weight_and_bucket_finish_scatters_back():
    model = nn.Linear(3, 2)
    for p in model.parameters():
        p.grad[...] = 2.0
    dist.allreduce_gradients(model, weight=0.25)  # one process: sum over ranks = itself
    assert all(np.all(p.grad == 0.5) for p in model.parameters())
    bucket = dist.Bucket([p.grad for p in model.parameters()])
    assert not bucket.in_place
    bucket.buffer = np.arange(8.0)
    bucket.finish()
    assert np.array_equal(
        np.concatenate([p.grad.ravel() for p in model.parameters()]), np.arange(8.0)
    )


def test_without_mpi4py_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # `import mpi4py` now raises ImportError
    monkeypatch.setattr(dist._group, "comm", None)
    with pytest.raises(dist.DistributedError, match=r'pip install "tapernn\[mpi\]"'):
        dist.init()


def test_train_under_a_launcher_without_mpi4py_exits_2_naming_the_extra(
    text_file, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(dist._group, "comm", None)
    monkeypatch.setenv("PMI_RANK", "0")  # what mpiexec would set
    assert train_main(["--text", str(text_file), "--steps", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert 'pip install "tapernn[mpi]"' in err and "Traceback" not in err


# ---- under mpiexec -n 2 ------------------------------------------------------------------------


@needs_mpiexec
def test_collectives_against_numpy(tmp_path):
    done = launch(2, [WORKER, "collectives", str(tmp_path)])
    assert done.returncode == 0, done.stdout + done.stderr
    r0, r1 = load(tmp_path / "coll0.npz"), load(tmp_path / "coll1.npz")
    n = sum(k.startswith("grad") for k in r0)
    assert n == 15 + 2  # LSTM's and Linear's parameters
    same = nn.Sequential(nn.LSTM(3, 4), nn.Linear(4, 5).astype("float32"))  # the worker's model
    plan = dist.plan_buckets(same.parameters(), bucket_bytes=400)
    assert {b.in_place for b in plan} == {True, False}  # both kinds of bucket are exercised
    assert {a.dtype for b in plan if not b.in_place for a in b.arrays} == {
        np.dtype("float32"),
        np.dtype("float64"),
    }
    for k in range(n):  # sum_r weight_r * grad_r, in every rank, in the gradient's dtype
        expected = r0["weight"] * r0[f"grad{k}"] + r1["weight"] * r1[f"grad{k}"]
        for r in (r0, r1):
            assert r[f"after{k}"].dtype == r0[f"grad{k}"].dtype
            np.testing.assert_allclose(
                r[f"after{k}"], expected, rtol=1e-6 if r0[f"grad{k}"].dtype == np.float32 else 1e-15
            )
        assert np.array_equal(r0[f"data{k}"], r1[f"data{k}"])  # rank 0's parameters everywhere
    for r in (r0, r1):
        assert list(r["gathered"]) == [0, 1] and str(r["told"]) == "from 1"


@needs_mpiexec
def test_two_ranks_on_half_batches_equal_one_process_and_each_other(tmp_path, text_file):
    argv = ["--text", str(text_file), "--batch", "4", "--steps", "5", *TINY]
    one, two = tmp_path / "one", tmp_path / "two"
    assert worker(0, one, argv).returncode == 0
    done = worker(2, two, argv)
    assert done.returncode == 0, done.stdout + done.stderr
    single, r0, r1 = load(one / "rank0.npz"), load(two / "rank0.npz"), load(two / "rank1.npz")
    assert list(r0["rows"]) == [0, 2] and list(r1["rows"]) == [2, 4]
    params = [k for k in single if k.startswith("param")]
    for k in params:  # the ranks hold bit-identical parameters ...
        assert np.array_equal(r0[k], r1[k]), k
    # ... equal to one process on the whole batch; the logged loss is the whole batch's
    assert_close(
        {k: r0[k] for k in params + ["losses"]}, {k: single[k] for k in params + ["losses"]}
    )
    states = [k for k in single if k.startswith("state")]
    assert states  # each rank carries its own rows of the remembered state (truncated BPTT)
    assert_close(
        {k: np.concatenate([r0[k], r1[k]]) for k in states}, {k: single[k] for k in states}
    )


@needs_mpiexec
def test_checkpoint_from_two_ranks_resumes_under_two_or_one_equal_to_one_run(tmp_path, text_file):
    # batch 5 splits 3 + 2 rows: the ranks' gradients are weighted 3/5 and 2/5, not averaged
    argv = ["--text", str(text_file), "--batch", "5", *TINY]
    straight, half = tmp_path / "straight", tmp_path / "half"
    out = train(0, *argv, "--steps", "12", "--checkpoint", str(straight))
    assert "epoch 1" in out  # the runs cross an epoch end (evaluation, state forgotten, save)
    train(2, *argv, "--steps", "5", "--checkpoint", str(half))
    shutil.copytree(half, tmp_path / "half_for_one")
    out = train(
        2,
        "--steps",
        "12",
        "--resume",
        "--checkpoint",
        str(half),
        "--no-progress",
        "--sample-len",
        "0",
    )
    assert out.count("resuming at step 5") == 1  # rank 0 alone logs
    assert "tokens/s over 2 ranks" in out  # the whole job's speed
    train(
        0,
        "--steps",
        "12",
        "--resume",
        "--checkpoint",
        str(tmp_path / "half_for_one"),
        "--no-progress",
        "--sample-len",
        "0",
    )
    reference = load_checkpoint(straight)
    for resumed in (load_checkpoint(half), load_checkpoint(tmp_path / "half_for_one")):
        assert resumed.step == reference.step == 12
        for part in ("model", "optimizer", "states"):
            assert_close(getattr(resumed, part), getattr(reference, part))


@needs_mpiexec
@pytest.mark.parametrize(("how", "cli"), [("kill", True), ("raise", True), ("hang", False)])
def test_a_rank_failing_mid_run_ends_the_job_non_zero_with_a_message(tmp_path, text_file, how, cli):
    argv = ["--text", str(text_file), "--batch", "4", "--steps", "400", *TINY]
    started = time.monotonic()
    out = tmp_path / "out"
    out.mkdir()
    extra = ["--cli"] if cli else []  # tapernn train's error handling, or an uncaught exception
    done = launch(
        2,
        [WORKER, str(out), "--fail", f"3:1:{how}", *extra, "--", *argv],
        env={"TAPERNN_MPI_TIMEOUT": "3"},
    )
    took = time.monotonic() - started
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert took < LIMIT
    if how == "hang":  # rank 0 gives up on the collective; the excepthook aborts the job
        assert "rank 0 of 2: uncaught CollectiveTimeout" in said
        assert "no reply from the other ranks within 3 s while averaging gradients" in said
    elif how == "raise":  # the failing rank aborts the job itself, with one line
        assert "rank 1 of 2: tapernn train: error: RuntimeError: injected failure at step 3" in said
        assert "Traceback" not in said
    else:  # the launcher reports the killed process and ends the others
        assert said.strip(), "the job ended without a word"
    assert not (out / "rank0.npz").exists()  # nobody finished "successfully"
