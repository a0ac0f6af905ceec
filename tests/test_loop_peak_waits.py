"""loop_peak_bytes measures the loop, not numba compiles running in the background meanwhile
(tracemalloc traces every thread: a cold kernel compile started by an earlier model held
1.5 MB during a later model's measured steps and failed its report check, CI at stop 30)."""

import threading
import time

import numpy as np

from tapernn.apps.benchmark.memory import loop_peak_bytes
from tapernn.backends import background


class _SlowCompile:
    """A background job that holds 4 MB for a while, as a numba compile does."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def prepare(self, key: tuple) -> bool:
        self.started.set()
        time.sleep(0.05)
        held = np.ones(1 << 19)  # 4 MiB
        time.sleep(0.4)
        del held
        return True


def test_loop_peak_waits_for_background_compiles():
    job = _SlowCompile()
    background.request(job, ("slow",))
    assert job.started.wait(5)
    data = np.ones(1000)

    def step() -> None:  # (slow enough that the job's 4 MiB lives through the measured steps)
        np.add(data, 1.0)  # a few KiB a step
        time.sleep(0.1)

    peak = loop_peak_bytes(step, warmup=1, steps=3)
    assert peak < 256 * 1024, peak
