"""compile_child's server (BENCHMARKS.md "hcold7"): planned jobs -- the packed driver, fused
groups -- queued for the background worker go to one child process, the parent then loads them
from numba's cache (no compile); a child that fails or is killed leaves the worker to compile
the same kernels, with the same bits. Each case is a fresh process with fresh kernel and numba
caches (the suite's own process has children off: conftest), its worker held while the jobs
are queued, so the child takes them whatever the load (the worker takes none meanwhile)."""

import json
import os
import queue
import subprocess
import sys
from pathlib import Path

import pytest

from tapernn.backends import numba_available
from tapernn.launch import LAUNCHER_VARIABLES

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed")

ROOT = Path(__file__).resolve().parents[1]

# the packed driver (its four compiles, AVX2 or AVX-512) and three 2-D fused groups, asked for
# as a program's compile asks (request_planned), the worker held until the child is done with
# them (or gone); prints what ran where, and a digest of every kernel's output
SCRIPT = r"""
import hashlib, json, os, sys, time
import numpy as np
from tapernn.backends import background, compile_child, numba_backend, packed

MODE = sys.argv[1]
if MODE == "fail":  # the child's recipe names another cache folder: it refuses every job
    real = compile_child._recipe
    def _recipe(h, k):
        r = real(h, k)
        return r and (r[0], r[1], r[2] + "-elsewhere")
    compile_child._recipe = _recipe
if MODE == "kill":  # the child killed while it compiles its first job
    real_send = compile_child.Server.send
    def send(self, recipe):
        ok = real_send(self, recipe)
        time.sleep(0.5)
        self.proc.kill()
        return ok
    compile_child.Server.send = send

f8 = np.dtype("float64")
programs = [
    (("mul", (0, 1), (), (4, 8), f8), ("tanh", (-1,), (), (4, 8), f8)),
    (("sub", (0, 1), (), (4, 8), f8), ("exp", (-1,), (), (4, 8), f8)),
    (("add", (0, 1), (), (4, 8), f8), ("sigmoid", (-1,), (), (4, 8), f8)),
]
ops = [((4, 8), f8), ((4, 8), f8)]
handles = []
with background.held():
    background.start_numba()  # (the worker's first job: it holds that one, held, not ours)
    background.request(packed.handle(), ((f8.str,),))
    for p in programs:
        h, why = numba_backend.plan_kernel(p, ops, (4, 8), f8, background=True)
        assert h is not None, why
        handles.append(h)
        background.request_planned(h)
    server = compile_child._server[0]
    pid = server.proc.pid if server is not None else None
    deadline = time.monotonic() + 300
    while compile_child._server[0] is not None and time.monotonic() < deadline:
        time.sleep(0.05)
assert background.wait(300)
rng = np.random.default_rng(0)
digest = hashlib.sha1()
x, y = rng.standard_normal((2, 4, 8))
for h in handles:
    out = np.empty((4, 8))
    h.kernel(x, y, out)
    digest.update(out.tobytes())
a, w = rng.standard_normal((8, 64)), rng.standard_normal((64, 48))
ph = packed.handle()
out = packed.run_kernel(ph.kernel, a, packed.pack_panels(w), np.empty((8, 48)))
digest.update(out.tobytes())
kernels = [h.kernel for h in handles] + [ph.kernel]
print(json.dumps({
    "fed": server.fed if server is not None else 0,
    "started": compile_child.STARTED[0],
    "pid": pid,
    "errors": [h.error for h in handles] + [ph.error],
    "loaded": [not k.stats.cache_misses and bool(k.stats.cache_hits) for k in kernels],
    "digest": digest.hexdigest(),
}))
"""


def _run(cache: Path, mode: str, children: str = "1") -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(
        TAPERNN_KERNEL_CACHE=str(cache / "kernels"),
        NUMBA_CACHE_DIR=str(cache / "numba"),
        TAPERNN_LAYOUT_CACHE=str(cache / "layout.json"),
        TAPERNN_COMPILE_CHILD=children,
        TAPERNN_NUMBA_BACKGROUND="1",
        PYTHONPATH=str(ROOT),
    )
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same kernels with no child (TAPERNN_COMPILE_CHILD=0): every one compiled here."""
    got = _run(tmp_path_factory.mktemp("none"), "ok", children="0")
    assert got["started"] == 0 and got["fed"] == 0 and not any(got["errors"])
    assert not any(got["loaded"])  # (compiled, not loaded: the stats can tell)
    return got


def test_the_child_compiles_the_planned_jobs_and_the_parent_loads_them(tmp_path, reference):
    got = _run(tmp_path, "ok")
    assert got["started"] == 1 and got["fed"] == 4, got
    assert all(got["loaded"]), got  # (numba's cache hit, no miss: none compiled here)
    assert not any(got["errors"])
    assert got["digest"] == reference["digest"]
    assert _gone(got["pid"])  # (stopped once the queue had no job for it)
    again = _run(tmp_path, "ok")  # warm: no child at all
    assert again["started"] == 0 and all(again["loaded"])
    assert again["digest"] == reference["digest"]


@pytest.mark.parametrize("mode", ["fail", "kill"])
def test_a_failed_or_killed_child_leaves_the_worker_to_compile(tmp_path, reference, mode):
    got = _run(tmp_path, mode)
    assert got["started"] == 1 and got["fed"] == 0, got
    assert not any(got["errors"])
    assert not all(got["loaded"])  # (compiled here)
    assert got["digest"] == reference["digest"]
    assert _gone(got["pid"])


class _Stub:
    """A server that starts nothing (offered's decision only)."""

    def __init__(self):
        self.proc = type("P", (), {"poll": staticmethod(lambda: None)})()


class _Handle:
    def __init__(self, name, folder):
        self.name, self.folder = name, folder

    def has(self, key):
        return False

    def child_recipe(self, key):
        return self.name, "kernel", self.folder, ("m", "C", ())


def test_the_server_starts_for_two_cold_jobs_and_not_on_a_busy_machine(monkeypatch, tmp_path):
    from tapernn.backends import compile_child
    from tapernn.launch import cpus

    if cpus() < 2:
        pytest.skip("one core: no child ever")
    for v in LAUNCHER_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.delenv(compile_child.ENV, raising=False)
    monkeypatch.setattr(compile_child, "MAX", [1])
    monkeypatch.setattr(compile_child, "Server", _Stub)
    monkeypatch.setattr(compile_child, "_feed", lambda server, jobs: None)
    monkeypatch.setattr(compile_child, "_tried", set())
    monkeypatch.setattr(compile_child, "_cold", {})
    monkeypatch.setattr(compile_child, "_jobs", {})

    def offered(load, *names):
        monkeypatch.setattr(compile_child, "_server", [None])
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        jobs = queue.Queue()
        for n in names:
            jobs.put((_Handle(f"tapernn_k9_{n}", tmp_path), ("key",), None))
        compile_child.offered(jobs)
        return compile_child._server[0] is not None

    assert offered(0.2, "a", "b")
    assert not offered(0.2, "a")  # (one job: the worker alone)
    assert not offered(cpus() - 0.4, "a", "b")  # (busy)
    monkeypatch.setenv(compile_child.ENV, "1")
    assert offered(cpus() + 5.0, "a", "b")  # (asked for: whatever the load)
    folder = tmp_path / "__pycache__"
    folder.mkdir()
    (folder / "tapernn_k9_a.kernel-3.nbi").write_bytes(b"")
    (folder / "tapernn_k9_b.kernel-3.nbi").write_bytes(b"")
    monkeypatch.setattr(compile_child, "_cold", {})
    assert not offered(0.2, "a", "b")  # (warm: numba's cache has them)
