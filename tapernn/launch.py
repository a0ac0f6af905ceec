"""What started this process and what it may run on, read from the OS and the environment
without initialising anything: the CPUs it may use (own_threads' split, compile_child's
children) and whether an MPI launcher started it (apps/distributed.py, compile_child: one
child per rank would crowd the ranks' cores)."""

from __future__ import annotations

import os

# what MPI launchers (mpiexec/mpirun of MPICH, Intel MPI, Open MPI, MVAPICH; srun's PMI/PMIx
# plugins) put in each process's environment
LAUNCHER_VARIABLES = (
    "PMI_RANK",
    "PMI_SIZE",
    "PMIX_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_SIZE",
)


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpiexec, mpirun, srun) started this process, read from the
    environment without initialising MPI. `apps.distributed.init()` then tells how many ranks
    there are."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        return os.cpu_count() or 1
