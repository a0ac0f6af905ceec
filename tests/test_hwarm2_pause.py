"""The background worker held through a model's first call (worker_pause.py, issue 19's
warm-cache first call, BENCHMARKS.md "hwarm2"): numba is not even imported during call 1 -- the
compile's cache-folder question (numba_opt.opt_level) is answered without it -- the worker then
makes every kernel with no one waiting, and the bits of every call are those of a worker never
held. worker_pause.turn: a hold keeps the worker, a hold taken again within HELD_GAP_S too, a
wait for a kernel never waits on it. numba_opt.opt_level before numba's import reads what
numba then reads."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tapernn.backends import numba_available, worker_pause

ROOT = Path(__file__).resolve().parents[1]
numba_only = pytest.mark.skipif(not numba_available(), reason="numba is not installed")

# a small Sequencer(FastLSTM) trained 4 calls on the numba backend in the background; `plain`:
# the worker never held (held a no-op: the code before worker_pause)
_MODEL = """
import contextlib, hashlib, json, sys, time
import numpy as np
import tapernn as tn
from tapernn import nn
from tapernn.backends import background, worker_pause
# (a loaded machine's call 1 is held all the same, and a main thread descheduled past the 20 ms
# gap between the compile's hold and the first call's would let the worker in by design)
worker_pause.FIRST_CALL_HOLD_S, worker_pause.HELD_GAP_S = 600.0, 2.0
if sys.argv[1] == "plain":
    background.first_call = contextlib.nullcontext
tn.set_backend("numba")
tn.manual_seed(0)
m = nn.Sequencer(nn.FastLSTM(8, 8))
rng = np.random.default_rng(0)
x, g = rng.standard_normal((2, 4, 3, 8))
digest, seen = hashlib.sha1(), {}
for call in range(1, 5):
    digest.update(m.forward(x).tobytes())
    digest.update(m.backward(x, g).tobytes())
    if call == 1:
        seen["numba_in_call_1"] = "numba" in sys.modules
        seen["done_in_call_1"] = background.activity()[1]
        deadline = time.monotonic() + 300  # the worker goes on with no one waiting
        while background.activity()[2] and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["left_after_call_1"] = background.activity()[2]
for p in m.parameters():
    digest.update(np.asarray(p.grad).tobytes())
seen["digest"] = digest.hexdigest()
print(json.dumps(seen))
"""


def _model(arm: str) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        TAPERNN_NUMBA_BACKGROUND="1",
        TAPERNN_COMPILE_CHILD="1",  # (offered's scan runs whatever the load: opt_level asked)
    )
    out = subprocess.run(
        [sys.executable, "-c", _MODEL, arm],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@numba_only
def test_call_1_imports_no_numba_and_the_bits_are_those_of_a_worker_never_held():
    held, plain = _model("held"), _model("plain")
    assert not held["numba_in_call_1"] and held["done_in_call_1"] == 0
    assert held["left_after_call_1"] == 0  # (made after call 1, no one waiting)
    assert held["digest"] == plain["digest"]


def _turning() -> tuple[threading.Event, threading.Thread]:
    """A started worker thread taking its `turn`, and the event it sets once the turn returns."""
    done = threading.Event()
    worker = threading.Thread(target=lambda: (worker_pause.turn(), done.set()), daemon=True)
    worker.start()
    return done, worker


def _turned(hold_again: bool = False) -> tuple[bool, bool]:
    """(whether a worker's `turn` returned while a hold was on, whether it returned after)."""
    with worker_pause.held():
        done, worker = _turning()
        during = done.wait(0.3)
    if hold_again:  # (within HELD_GAP_S: the next call of a model)
        with worker_pause.held():
            during = during or done.wait(0.3)
    after = done.wait(30)
    worker.join(30)
    return during, after


def test_a_hold_keeps_the_worker_until_it_ends(monkeypatch):
    monkeypatch.setattr(worker_pause, "HELD_GAP_S", 0.05)
    assert _turned() == (False, True)


def test_a_hold_taken_again_within_the_gap_keeps_the_worker(monkeypatch):
    monkeypatch.setattr(worker_pause, "HELD_GAP_S", 5.0)  # (the re-hold comes well within)
    assert _turned(hold_again=True) == (False, True)


def test_the_gap_counts_from_the_hold_s_end_for_a_worker_asking_after_it(monkeypatch):
    """A job requested at a compile's end: the worker's first turn came after that hold had
    ended and before the first call's began -- and went at once (CI: numba imported in call 1,
    one run in about four at load 4 here)."""
    monkeypatch.setattr(worker_pause, "HELD_GAP_S", 0.5)
    with worker_pause.held():
        pass
    done, worker = _turning()
    early = done.wait(0.2)
    went = done.wait(30)
    worker.join(30)
    assert (early, went) == (False, True)


def test_a_hold_with_a_limit_keeps_the_worker_that_long_only():
    """A first call's hold (`first_call`) ends at FIRST_CALL_HOLD_S: a big model's long call 1
    must not keep the worker's compiles from it (the switch call would wait for all of them)."""
    with worker_pause.held(at_most=0.5):
        done, worker = _turning()
        early = done.wait(0.2)
        went = done.wait(30)  # (still held)
    worker.join(30)
    assert (early, went) == (False, True)


def test_a_hold_without_a_limit_keeps_the_worker_past_a_limited_one():
    """ "auto"'s second plan holds without a limit; the compile inside it holds with one."""
    with worker_pause.held(), worker_pause.held(at_most=0.05):
        done, worker = _turning()
        during = done.wait(0.5)
    after = done.wait(30)
    worker.join(30)
    assert (during, after) == (False, True)


def test_a_wait_for_a_kernel_lets_a_held_worker_go():
    done, ready = threading.Event(), worker_pause.Ready()
    with worker_pause.held():
        worker = threading.Thread(
            target=lambda: (worker_pause.turn(), done.set(), ready.set()), daemon=True
        )
        worker.start()
        assert ready.wait(30)  # (the waiter is the held caller itself: no deadlock)
    worker.join(30)
    assert done.is_set()


_OPT = """
import json, sys
from tapernn.backends import numba_opt
before = numba_opt.opt_level()
imported = "numba" in sys.modules
import numba
print(json.dumps({"before": before, "imported": imported, "numba": numba_opt.opt_level()}))
"""


@numba_only
@pytest.mark.parametrize("level", [None, "0", "2", "max", "7", "yaml"])
def test_opt_level_before_numba_is_what_numba_then_reads(level, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_OPT"}
    env["PYTHONPATH"] = str(ROOT)
    if level == "yaml":  # (numba reads its config file in the cwd: opt_level imports numba)
        (tmp_path / ".numba_config.yaml").write_text("opt: 2\n")
    elif level is not None:
        env["NUMBA_OPT"] = level
    out = subprocess.run(
        [sys.executable, "-c", _OPT],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] == got["numba"]
    assert got["imported"] == (level in ("7", "yaml"))  # (a value numba alone reads)
