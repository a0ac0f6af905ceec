"""A kernel compiled in a child process (issue 19, BENCHMARKS.md "hcold6"). numba compiles holding
the GIL, so a process compiles one kernel at a time, on one core; a cold model's step loops
(step_loop.py: 2-3 s each) came one after the other in the background worker, the other core
idle, while the caller's steps shared the GIL with them. `ask` starts a child process that
imports the kernel's module and the kernel-cache modules its text names (their texts, as the
parent has them), compiles the function for the asked signature under the same LLVM options
(numba_interleave.named) and writes numba's cache files beside the module; the parent's own
compile of it, later (`settle` first), is then a load of those files. Same text, same options,
same numba, same machine: the machine code a compile in the parent would make
(tests/test_hcold6_child.py: a step loop compiled by a child gives the Python loop's bits).
`offered` starts one child for the planned jobs a cold program queues at its compile, beside
the worker (the comment above `Server`; tests/test_hcold7_server.py).

A child costs only its time: one that fails or outlives TIMEOUT_S (killed) leaves the parent to
compile as before. None where numba's cache has an index for the module already (a warm cache:
the parent's load is what it would do anyway), under an MPI launcher (every rank would start
its own), with one core, with `limit()` children running ($TAPERNN_COMPILE_CHILD: how many, 0 none;
default MAX: one less than the cores). No
orphans: a child exits when its parent is gone (it watches its parent id), and the parent kills
its unfinished children at exit. Two processes saving numba cache entries of one function at
once could give two signatures one data file (numba picks the name from the index it read, no
lock): numba_setup.locked_saves (installed by its setup, so in the child too) takes a lock on the
cache folder around each save and writes the data before the index names it."""

from __future__ import annotations

import atexit
import base64
import contextlib
import logging
import os
import pickle
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import TapernnError
from ..launch import cpus, launched_by_mpi
from . import numba_setup

log = logging.getLogger(__name__)

ENV = "TAPERNN_COMPILE_CHILD"
TIMEOUT_S = [30.0]  # a waited-for child's longest run (from its start): then killed, compiled here
MAX = [max(1, cpus() - 1)]  # children running at once
_NAMES = re.compile(r"\btapernn_[a-z0-9_]+?_[0-9a-f]{20}\b")  # (a kernel-cache module's name)
_jobs: dict[str, Job] = {}  # module name (+ the asker's tag) -> its child's job
_sources: dict[str, str] = {}  # a job's module text -> its _jobs key
_lock = threading.Lock()
STARTED = [0]  # children started so far (tests)
FED = [0]  # jobs a compile server made so far (tests, tools/child_bits.py)


def limit(locked: bool = True) -> int:
    """Children that may run at once: $TAPERNN_COMPILE_CHILD (0: none; unset: MAX), none under
    an MPI launcher, with one core, or where numba's cache saves are not locked (`locked_saves`:
    another numba; not checked without `locked`: numba not set up here yet, `_feed` checks)."""
    text = os.environ.get(ENV, "")
    try:
        n = int(text) if text else MAX[0]
    except ValueError:
        raise TapernnError(f"${ENV}: expected an integer >= 0, got {text!r}") from None
    if launched_by_mpi() or cpus() < 2:
        return 0
    if locked and not numba_setup.LOCKED[0]:
        return 0
    return max(0, n)


class Job:
    """One child compiling module `name`'s function; `wait` says how it ended ("" = compiled)."""

    def __init__(self, name: str, proc: subprocess.Popen, spec: str, err: Any):
        self.name, self.proc, self.spec, self.err = name, proc, spec, err
        self.started = time.monotonic()
        self.why: str | None = None
        self._lock = threading.Lock()

    def wait(self, timeout: float | None = None) -> str:
        with self._lock:
            if self.why is None:
                self.why = self._end(TIMEOUT_S[0] if timeout is None else timeout)
            return self.why

    def _end(self, timeout: float) -> str:
        try:
            code = self.proc.wait(timeout=max(0.0, timeout - self.age()))
            why = "" if code == 0 else f"child exited with {code}: {_last_line(self.err)}"
        except subprocess.TimeoutExpired:
            why = f"child killed after {TIMEOUT_S[0]:.0f} s"
            self.kill()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.spec)
        self.err.close()
        return why

    def age(self) -> float:
        return time.monotonic() - self.started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ask(
    name: str,
    text: str,
    function: str,
    sigs: list,
    directory: Path,
    fn: Any = None,
    tag: str = "",
) -> Job | None:
    """Start a child compiling `function` of kernel-cache module `name` (text `text`, to live in
    `directory`) for each numba signature of `sigs`, unless one is running for it (`name` +
    `tag`) or there is no reason (the module docstring): numba's cache has them (`fn`: the
    function's dispatcher here, to look them up; else any index file of `function` counts);
    the job, or None."""
    most = limit()
    with _lock:
        if name + tag in _jobs or _running() >= most:
            return None
        if _cached(fn, sigs, name, function, directory):
            return None  # (a warm cache, or another process at it)
        try:
            modules = [*_dependencies(text, name), (name, str(directory / f"{name}.py"), text)]
        except (LookupError, OSError) as e:  # (a module the text names is not loaded here)
            log.debug("tapernn: no compile child for %s: %s", name, e)
            return None
        job = _start(name, modules, function, sigs)
        _jobs[name + tag] = job
        _sources[text] = name + tag
        return job


def _running() -> int:
    """Children running now: compile jobs' and the server's (`offered`)."""
    server = _server[0]
    alive = server is not None and server.proc.poll() is None
    return sum(j.proc.poll() is None for j in _jobs.values()) + alive


def _cached(fn: Any, sigs: list, name: str, function: str, directory: Path) -> bool:
    """Whether numba's cache has every signature of `sigs` (dispatcher `fn`'s index), or with
    no `fn`, any index file of `function` in module `name` (unknown: True, no child)."""
    from .kernel_cache import numba_folders

    if fn is None:
        return any(f"{name}.{function}" in _indexed(f) for f in numba_folders(directory))
    try:
        cache = fn._cache
        index = cache._cache_file._load_index()
        codegen = fn.targetctx.codegen()
        return all(cache._index_key(tuple(sig), codegen) in index for sig in sigs)
    except Exception:  # noqa: BLE001 -- another numba's cache: no child
        return True


# folder -> (its mtime, "module.function" of its numba index files): one listing per change of
# the folder, not a glob over it per job (a cold program asks ~20: ~0.1 s of call 1's main
# thread with a cache of 4,500 files, BENCHMARKS.md "hwarm2")
_listings: dict[Path, tuple[int, frozenset[str]]] = {}


def _indexed(folder: Path) -> frozenset[str]:
    """'module.function' of every numba index file in `folder` ("<module>.<function>-<line>
    .<python>.nbi"); a file added in the mtime's tick after a listing is missed until the next
    change: a child then compiles a kernel numba has -- time, not a result."""
    try:
        stamp = folder.stat().st_mtime_ns
    except OSError:
        return frozenset()
    known = _listings.get(folder)
    if known is None or known[0] != stamp:
        try:
            names = frozenset(f.rsplit("-", 1)[0] for f in os.listdir(folder) if f.endswith(".nbi"))
        except OSError:
            return frozenset()
        known = _listings[folder] = (stamp, names)
    return known[1]


def running_for(source: Any) -> bool:
    """Whether a child compiles the kernel module of text `source` now, within TIMEOUT_S."""
    job = _jobs.get(_sources.get(source, "")) if isinstance(source, str) else None
    if job is None or job.why is not None or job.age() > TIMEOUT_S[0]:
        return False
    return job.proc.poll() is None


def settle_for(source: str) -> str | None:
    """`settle` for the kernel module of text `source`."""
    return settle(_sources[source]) if source in _sources else None


def settle(name: str) -> str | None:
    """Wait for the child compiling module `name` (if any; at most TIMEOUT_S from its start):
    None if there was none, "" if it compiled, else why not (the caller compiles)."""
    job = _jobs.get(name)
    if job is None:
        return None
    why = job.wait()
    if why:
        log.debug("tapernn: compile child for %s: %s", name, why)
    return why


def _dependencies(text: str, name: str) -> list[tuple[str, str, str]]:
    """(name, path, text) of every kernel-cache module `text` names, and those theirs, each
    after the ones it names (the order the child imports them in)."""
    out: list[tuple[str, str, str]] = []
    seen = {name}

    def visit(names: list[str]) -> None:
        for dep in names:
            if dep in seen:
                continue
            seen.add(dep)
            path = getattr(sys.modules.get(dep), "__file__", None)
            if path is None:
                raise LookupError(f"{dep} not loaded")
            body = Path(path).read_text()
            visit(_NAMES.findall(body))
            out.append((dep, path, body))

    visit(_NAMES.findall(text))
    return out


# the child's command: this tapernn's folder first on its path -- before the working directory,
# which `python -m` and `-c` put first (a tapernn checkout there is another tapernn) -- and the
# package without its __init__ (the public API's imports, ~0.6 s CPU of the child's start,
# BENCHMARKS.md "hcold8"): a child imports only the backend modules its jobs name
_RUN = (
    "import sys, types; sys.path.insert(0, sys.argv[1]); t = types.ModuleType('tapernn');"
    " t.__path__ = [sys.argv[1] + '/tapernn']; sys.modules['tapernn'] = t;"
    " import tapernn.backends.compile_child_run"
)


def _start(name: str, modules: list, function: str, sigs: list) -> Job:
    root = str(Path(__file__).resolve().parents[2])  # (the folder holding this tapernn)
    spec = {
        "parent": os.getpid(),
        "modules": modules,
        "function": function,
        "sigs": pickle.dumps(list(sigs)),
    }
    fd, path = tempfile.mkstemp(prefix="tapernn-compile-", suffix=".pickle")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(spec, f)
    err = tempfile.TemporaryFile()  # noqa: SIM115 -- (closed by Job.wait)
    argv = [sys.executable, "-c", f"{_RUN} as r; r.run(sys.argv[2])", root, path]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    STARTED[0] += 1
    return Job(name, proc, path, err)


# The compile server (issue 19, BENCHMARKS.md "hcold7"): a cold model's planned kernels -- the
# packed driver (~5.5 s CPU on the AVX2 EPYC) and the fused groups (~0.6 s each), asked for at its
# compile (background.request_planned) -- were compiled one after the other by the worker while
# the switch call waited. With two or more such jobs queued and a child allowed, one child
# process is started at once (its ~1.5 s start beside the worker's first compile) and takes jobs
# from the queue's far end while the worker takes them from the near end; each one the child
# has compiled goes back to the queue's front, where the worker makes it -- a load from numba's
# cache -- and sets its event as for any job (a failed or killed child's: a compile here, the
# same code). A job goes to the child only through its handle's `child_recipe(key)`: (module
# name, function, cache folder, (handle module, class, its arguments)) -- the child builds that
# handle and runs its own `prepare(key)`: the compile the worker would run, writing numba's cache.
_server: list[Server | None] = [None]
_tried: set[tuple[int, Any]] = set()  # (id(handle), key) of jobs a child had (never twice)
_cold: dict[tuple[str, str], bool] = {}  # (module, function) -> numba's cache had no index for it
READY_S = 60.0  # the server's longest start (python, numba, tapernn): then killed
# a server that ended before its jobs did (killed, silent, no start): none again in this process
# (a later request -- the packed driver's packs job, asked for by its job -- would start one)
_broken = [False]


class Server:
    """The child process compiling jobs one at a time (compile_child_run.serve): a job is one
    pickled line on its stdin, its reply one line on its stdout ("ok" or "fail <why>")."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        argv = [sys.executable, "-c", f"{_RUN} as r; r.serve({os.getpid()})", root]
        # (its handles' prepare compiles in place: no worker thread, no grandchildren)
        env = dict(os.environ, TAPERNN_NUMBA_BACKGROUND="0", **{ENV: "0"})
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 -- (closed by stop)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env
        )
        STARTED[0] += 1
        self.replies: queue.Queue = queue.Queue()
        self.fed = 0  # jobs it compiled (tests)
        threading.Thread(target=self._read, daemon=True, name="tapernn-compile-server").start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.replies.put(line.decode(errors="replace").strip())
        self.replies.put(None)  # (its end)

    def reply(self, timeout: float) -> str | None:
        """Its next reply line; None when it ended or was silent `timeout` s (then killed)."""
        try:
            line = self.replies.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None:
            self.kill()
        return line

    def send(self, recipe: tuple) -> bool:
        try:
            self.proc.stdin.write(base64.b64encode(pickle.dumps(recipe)) + b"\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):  # (it ended)
            return False

    def stop(self) -> None:
        """Its stdin closed (it exits), waited for, killed if it does not."""
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        self.err.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def offered(jobs: queue.Queue) -> None:
    """After background.request queued a job: start the server and its feeder thread (the
    comment above) when none runs, a child is allowed, and `jobs` holds two or more jobs a
    child can make that numba's cache does not have -- and, unless $TAPERNN_COMPILE_CHILD is
    set, no core is busy (`busy`)."""
    with _lock:
        if _server[0] is not None or _broken[0] or _running() >= limit(locked=False):
            return
        if not os.environ.get(ENV) and busy():
            return
        with jobs.mutex:
            queued = list(jobs.queue)
        if sum(_recipe(h, k) is not None for h, k, _ in queued) < 2:
            return
        server = _server[0] = Server()
    threading.Thread(target=_feed, args=(server, jobs), daemon=True, name="tapernn-feeder").start()


def busy() -> bool:
    """Whether the machine's 1-minute load average leaves less than half a core idle: then a
    child's CPU comes mostly out of this process's own share (the kernel's fair share per
    session, "autogroup") -- at load 11-16 on 2 cores a cold (32, 50, 256) model's switch call
    waited longer with the server than without it, its call 1 ~2 s longer (BENCHMARKS.md
    "hcold7")."""
    return os.getloadavg()[0] > cpus() - 0.5


def _recipe(handle: Any, key: Any) -> tuple | None:
    """The job's recipe for a child (`child_recipe`), unless a child had it, the handle has
    none, or numba's cache has its function (warm: the worker's load is all there is)."""
    make = getattr(handle, "child_recipe", None)
    if make is None or (id(handle), key) in _tried or handle.has(key):
        return None
    name, function, directory, recipe = make(key)
    if (name, function) not in _cold:
        _cold[name, function] = not _cached(None, [], name, function, directory)
    return (recipe, key, str(directory)) if _cold[name, function] else None


def _take(jobs: queue.Queue) -> tuple | None:
    """The last queued job a child can make (removed from `jobs`, still unfinished there), with
    its recipe -- not one whose handle is `queued_last` (the packed driver, due at the packed
    call) while another is queued: the child helps the worker with the switch call's jobs
    first; None if there is none."""
    with jobs.mutex:
        queued = list(reversed(jobs.queue))
        queued.sort(key=lambda item: getattr(item[0], "queued_last", False))  # (stable)
        for item in queued:
            recipe = _recipe(item[0], item[1])
            if recipe is not None:
                jobs.queue.remove(item)
                _tried.add((id(item[0]), item[1]))
                return item, recipe
    return None


def _give_back(jobs: queue.Queue, item: tuple) -> None:
    """Put a job at the front of `jobs` (the worker makes it next: a load, or a compile)."""
    with jobs.mutex:
        jobs.queue.appendleft(item)
        jobs.not_empty.notify()


def _feed(server: Server, jobs: queue.Queue) -> None:
    """The server's jobs: the last one a child can make, sent, its reply awaited (TIMEOUT_S at
    most), given back to the worker; until none is left or the server fails (the worker then
    makes every job, the one it had included)."""
    try:
        with contextlib.suppress(Exception):  # (failed: not LOCKED, no job for the child)
            numba_setup.setup()  # (here, not on the asking thread: numba's import; if not yet)
        ready = numba_setup.LOCKED[0] and server.reply(READY_S) == "ready"
        _broken[0] = not ready
        while ready:
            taken = _take(jobs)
            if taken is None:
                return
            item, recipe = taken
            why = server.reply(TIMEOUT_S[0]) if server.send(recipe) else None
            _give_back(jobs, item)
            if why is None:
                _broken[0] = True
                log.debug("tapernn: compile server ended: %s", _last_line(server.err))
                return
            if why == "ok":
                server.fed += 1
                FED[0] += 1
            else:
                log.debug("tapernn: compile server: %s", why)
    finally:
        server.stop()
        with _lock:
            if _server[0] is server:
                _server[0] = None


def _last_line(err: Any) -> str:
    """The last line a child wrote to its stderr (a traceback's: the error)."""
    err.seek(0)
    lines = [x for x in err.read().decode(errors="replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else "(no message)"


def _ended() -> None:
    """At the parent's exit: its unfinished children killed, their spec files removed."""
    if _server[0] is not None:
        _server[0].kill()
    for job in list(_jobs.values()):
        job.kill()
        with contextlib.suppress(OSError):
            os.unlink(job.spec)


def _forked() -> None:
    """A forked process owns none of its parent's children."""
    global _lock
    _jobs.clear()
    _sources.clear()
    _server[0] = None
    _tried.clear()
    _lock = threading.Lock()


atexit.register(_ended)
os.register_at_fork(after_in_child=_forked)
