"""Data-parallel training over MPI through mpi4py (Horovod's model): process-group set-up, parameter
broadcast, gradient averaging in a few large buckets with non-blocking allreduce, a
DistributedOptimizer, collectives that time out instead of hanging, and abort-on-error.
Application layer: nothing in the core imports it, and it imports mpi4py only in `init()`."""

from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .. import optim
from ..errors import TapernnError
from ..launch import launched_by_mpi  # noqa: F401 (this module's public name: dist.launched_by_mpi)
from ..nn.packing import storage

MPI_EXTRA = 'pip install "tapernn[mpi]"'
TIMEOUT_ENV = "TAPERNN_MPI_TIMEOUT"
DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait: above any step, evaluation or save
BUCKET_BYTES = 256 * 1024  # gradient arrays below this are packed together into one bucket


class DistributedError(TapernnError, RuntimeError):
    """MPI is missing, a collective timed out, or the ranks disagree (one-line message)."""


class CollectiveTimeout(DistributedError):
    """A collective did not complete in time: another rank died, hangs or took another path."""


class _Group:
    comm: Any = None
    timeout: float = DEFAULT_TIMEOUT


_group = _Group()


def init(timeout: float | None = None, abort_on_error: bool = True) -> Any:
    """Initialise MPI (once) and return the world communicator.

    `timeout`: seconds any collective here may wait before raising CollectiveTimeout (default
    $TAPERNN_MPI_TIMEOUT or 300). `abort_on_error`: an uncaught exception on any rank calls
    MPI_Abort, so the whole job exits non-zero instead of the other ranks waiting forever.
    Counterpart: Horovod's `hvd.init()`; Torch7 had no built-in equivalent (torch-mpi).
    """
    if _group.comm is None:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise DistributedError(
                f"distributed training needs mpi4py and an MPI library, which are not installed "
                f"({e}); install them with {MPI_EXTRA}"
            ) from None
        _group.comm = MPI.COMM_WORLD
        if abort_on_error and _group.comm.Get_size() > 1:
            sys.excepthook = _abort_excepthook
    if timeout is None:
        env = os.environ.get(TIMEOUT_ENV)
        try:
            timeout = float(env) if env else _group.timeout
        except ValueError:
            raise DistributedError(
                f"${TIMEOUT_ENV} must be a number of seconds, got {env!r}"
            ) from None
    if not timeout > 0:
        raise DistributedError(f"the collective timeout must be positive, got {timeout}")
    _group.timeout = float(timeout)
    return _group.comm


def _comm() -> Any:
    if _group.comm is None:
        raise DistributedError("tapernn.distributed.init() has not been called")
    return _group.comm


def rank() -> int:
    """This process's rank in 0 .. world_size() - 1 (0 before init: a single process)."""
    return 0 if _group.comm is None else _group.comm.Get_rank()


def world_size() -> int:
    """The number of processes training together (1 before init)."""
    return 1 if _group.comm is None else _group.comm.Get_size()


def shard(n: int, of_rank: int | None = None, size: int | None = None) -> tuple[int, int]:
    """Rows [lo, hi) of an n-row batch that `of_rank` (default: this rank) trains on: contiguous,
    in rank order, sizes differing by at most one (the first n % size ranks take one more)."""
    r = rank() if of_rank is None else of_rank
    size = world_size() if size is None else size
    if not (n >= 0 and size >= 1 and 0 <= r < size):
        raise DistributedError(
            f"shard: expected n >= 0 rows and a rank in 0..size-1, got n={n}, "
            f"rank {r} of size {size}"
        )
    base, extra = divmod(n, size)
    lo = r * base + min(r, extra)
    return lo, lo + base + (r < extra)


# ---- waiting with a deadline -------------------------------------------------------------------


def wait(requests: Sequence[Any], what: str) -> None:
    """Complete non-blocking `requests`, raising CollectiveTimeout after the group's timeout.

    MPI's blocking collectives cannot time out; polling MPI_Testall can. The back-off stays under
    a millisecond, small next to a training step, and leaves the CPU to other ranks meanwhile."""
    if not requests:
        return
    from mpi4py import MPI

    deadline = time.monotonic() + _group.timeout
    pause = 1e-5
    while not MPI.Request.Testall(list(requests)):
        if time.monotonic() > deadline:
            raise CollectiveTimeout(
                f"rank {rank()}: no reply from the other ranks within {_group.timeout:g} s while "
                f"{what}; a rank has died, hangs, or took another path (raise ${TIMEOUT_ENV} if a "
                f"step, evaluation or checkpoint legitimately takes longer)"
            )
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)


def abort(message: str, code: int = 1) -> None:
    """Print `message` (prefixed with the rank) and end every rank of the job with `code`."""
    print(f"tapernn: rank {rank()} of {world_size()}: {message}", file=sys.stderr, flush=True)
    if world_size() > 1:
        time.sleep(0.2)  # the launcher forwards output asynchronously: let the last lines arrive
        _comm().Abort(code)
    raise SystemExit(code)


def _abort_excepthook(kind: type, value: BaseException, tb: Any) -> None:
    traceback.print_exception(kind, value, tb)
    sys.stderr.flush()
    abort(
        f"uncaught {kind.__name__}; aborting the job so no rank waits forever",
        130 if issubclass(kind, KeyboardInterrupt) else 1,
    )


# ---- small collectives --------------------------------------------------------------------


def allreduce_values(values: Iterable[float], what: str = "combining values") -> np.ndarray:
    """Sum a few float64 values over all ranks (losses, counts, flags)."""
    buf = np.array(list(values), dtype=np.float64)
    if world_size() > 1:
        from mpi4py import MPI

        wait([_comm().Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)], what)
    return buf


def broadcast_object(obj: Any, root: int = 0, what: str = "broadcasting") -> Any:
    """`obj` from `root` on every rank (pickled), with the timeout."""
    if world_size() == 1:
        return obj
    comm = _comm()
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if rank() == root else b""
    size = np.array([len(data)], dtype=np.int64)
    wait([comm.Ibcast(size, root=root)], what)
    buf = (
        np.frombuffer(data, dtype=np.uint8).copy()
        if rank() == root
        else np.empty(int(size[0]), dtype=np.uint8)
    )
    wait([comm.Ibcast(buf, root=root)], what)
    return obj if rank() == root else pickle.loads(buf.tobytes())


def allgather_object(obj: Any, what: str = "gathering") -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (pickled), with the timeout."""
    if world_size() == 1:
        return [obj]
    comm = _comm()
    data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
    sizes = np.empty(world_size(), dtype=np.int64)
    wait([comm.Iallgather(np.array([data.size], dtype=np.int64), sizes)], what)
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    wait([comm.Iallgatherv(data, [out, sizes.tolist()])], what)
    ends = np.cumsum(sizes)
    return [pickle.loads(out[e - s : e].tobytes()) for s, e in zip(sizes, ends)]


# ---- parameters and gradients -------------------------------------------------------------


def _parameters(model_or_params: Any) -> list:
    if hasattr(model_or_params, "parameters"):
        return list(model_or_params.parameters())
    return list(model_or_params)


class Bucket:
    """Gradient arrays reduced by one Iallreduce: one large contiguous array in place (a
    parameter block of nn.packing), or several small ones packed into a staging buffer."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.in_place = len(arrays) == 1 and arrays[0].flags.c_contiguous
        self.nbytes = sum(a.nbytes for a in arrays)

    def start(self, comm: Any, op: Any) -> Any:
        from mpi4py import MPI

        if self.in_place:
            return comm.Iallreduce(MPI.IN_PLACE, self.arrays[0], op=op)
        self.buffer = np.concatenate([a.ravel() for a in self.arrays])
        return comm.Iallreduce(MPI.IN_PLACE, self.buffer, op=op)

    def finish(self) -> None:
        if self.in_place:
            return
        at = 0
        for a in self.arrays:
            a[...] = self.buffer[at : at + a.size].reshape(a.shape)
            at += a.size
        del self.buffer


def plan_buckets(params: list, bucket_bytes: int = BUCKET_BYTES) -> list[Bucket]:
    """Buckets covering every parameter's gradient exactly once, in a rank-independent order:
    each parameter block (or loose gradient) of at least `bucket_bytes` is a bucket of its own,
    reduced in place; the smaller ones are packed together, one bucket per dtype."""
    large, small = [], {}
    for _, grad in storage(params):
        if grad.nbytes >= bucket_bytes and grad.flags.c_contiguous:
            large.append(Bucket([grad]))
        else:
            small.setdefault(grad.dtype.str, []).append(grad)
    large.sort(key=lambda b: -b.nbytes)  # stable: equal sizes keep the model's order
    return large + [Bucket(arrays) for _, arrays in sorted(small.items())]


def broadcast_parameters(model_or_params: Any, root: int = 0) -> None:
    """Overwrite every rank's parameters with `root`'s (in place: blocks and compiled programs
    stay valid). Call once before training so all ranks start from the same point."""
    if world_size() == 1:
        return
    comm = _comm()
    arrays = [data for data, _ in storage(_parameters(model_or_params))]
    staged = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]
    wait([comm.Ibcast(a, root=root) for a in staged], "broadcasting the parameters")
    for a, s in zip(arrays, staged):
        if s is not a:
            a[...] = s


def allreduce_gradients(
    model_or_params: Any, weight: float | None = None, bucket_bytes: int = BUCKET_BYTES
) -> None:
    """Replace every parameter's `.grad` by the weighted sum over ranks, sum_r weight_r grad_r.

    `weight` (this rank's share) defaults to 1 / world_size(), the average; a rank training on
    b of B rows passes b / B, so uneven shards still give the full batch's gradient. All buckets'
    Iallreduce are posted before waiting on any, so MPI moves them concurrently.
    Counterpart: Horovod's allreduce of gradients; Torch7's `torch-mpi` allreduceTensor.
    """
    params = _parameters(model_or_params)
    weight = 1.0 / world_size() if weight is None else float(weight)
    for _, grad in storage(params):
        if weight != 1.0:
            grad *= weight
    if world_size() == 1:
        return
    from mpi4py import MPI

    comm = _comm()
    buckets = plan_buckets(params, bucket_bytes)
    requests = [b.start(comm, MPI.SUM) for b in buckets]
    wait(requests, "averaging gradients")
    for b in buckets:
        b.finish()


class DistributedOptimizer:
    """Wraps an optimizer: `step()` averages the gradients over ranks (`allreduce_gradients`),
    clips their global norm when `clip` > 0 (after averaging, so every rank clips alike), then
    runs the wrapped step; every rank ends the step with the same parameters.

    `weight`: this rank's share of the global batch (default 1 / world_size()). Everything
    else (lr, state_dict, zero_grad, ...) is the wrapped optimizer's. Counterpart: Horovod's
    `hvd.DistributedOptimizer`.
    """

    def __init__(
        self,
        optimizer: optim.Optimizer,
        clip: float = 0.0,
        weight: float | None = None,
        bucket_bytes: int = BUCKET_BYTES,
    ):
        self.optimizer = optimizer
        self.clip = float(clip)
        self.weight = weight
        self.bucket_bytes = bucket_bytes

    def synchronize(self) -> None:
        allreduce_gradients(self.optimizer.params, self.weight, self.bucket_bytes)

    def step(self) -> None:
        self.synchronize()
        if self.clip > 0:
            optim.clip_grad_norm(self.optimizer.params, self.clip)
        self.optimizer.step()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["optimizer"], name)


def find_mpiexec(name: str = "mpiexec") -> str | None:
    """`name` on PATH, else beside this interpreter (where the `mpich` wheel installs it)."""
    import shutil

    found = shutil.which(name)
    if found is None:
        beside = os.path.join(os.path.dirname(sys.executable), name)
        found = beside if os.access(beside, os.X_OK) else None
    return found


def launcher_command(n: int, mpiexec: str = "mpiexec") -> list[str]:
    """`mpiexec -n N` with the flag the installed MPI needs to start more ranks than cores:
    Open MPI refuses without --oversubscribe; MPICH's Hydra (the `mpich` wheel) needs none."""
    import subprocess

    path = find_mpiexec(mpiexec)
    if path is None:
        raise DistributedError(f"no {mpiexec!r} on PATH; install an MPI with {MPI_EXTRA}")
    version = subprocess.run(
        [path, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    is_open_mpi = "open mpi" in (version.stdout + version.stderr).lower()
    return [path, "-n", str(n)] + (["--oversubscribe"] if is_open_mpi else [])
