import contextlib
import os
import shutil
import tempfile
from collections import Counter

import numpy as np
import pytest

# numba's optimisation level (issue 19, hcold5/hcold6): the suite runs at numba's default -O3
# unless NUMBA_OPT says otherwise (`NUMBA_OPT=0 python -m pytest ...`: xdist workers and
# subprocess tests inherit it; the library keeps -O0 kernels cacheable and apart from -O3 ones,
# backends/numba_opt.py). -O0 by default was measured at stop 37 on fresh clones, quiet: a cold
# kernel cache 19:37 for the main pass (-O3 at stop 36: 19:24 -- what -O0 saves compiling, its
# unoptimised kernels spend running), a warm one 7:30 (-O3 ~5:45): so -O3, the code users run.
# The tests of -O3 machine code (vecmath's) re-run themselves at -O3 under a lower level
# (optimised_subprocess()).


# The files whose cold-kernel-cache CI time is longest, longest first (tools/ci_profile.py,
# BENCHMARKS.md "CI with a cold kernel cache" and "hcold4"): `--dist loadfile` hands them out
# first, the rest after them by number of tests (xdist's own order), so no long file starts last
# and leaves the other worker idle while it runs (a file is never split between workers). Order:
# process CPU of a cold run on the Zen 3 AVX2 machine (the lead's profile of main, 2026-12-06),
# a SHARED group by the sum of its files.
SLOW_FIRST = (
    "test_step_loop.py",
    "test_step_fuse.py",
    "test_own_room.py",
    "test_batch_split.py",
    "test_own_bias.py",
    "test_own_threads.py",
    "test_dz_in_gates.py",
    "test_xs_in_slab.py",
    "test_lend_rows.py",  # (its peaks run in fresh interpreters: CPU the profile misses)
    "test_masked_lengths.py",  # (cold: 128 s of CPU, BENCHMARKS.md "hisa")
    "test_packed_honest.py",
    "test_tap_matrix.py",
    "test_small_loop_peak.py",
    "test_bench.py",
    "test_memory_loop.py",
    "test_cells.py",
    "test_numba_program_layouts.py",
    "test_hunt_hqa8.py",
    "test_tap_room.py",
    "test_cell_fuzz.py",
    "test_mask_zero_step_loops.py",
    "test_step_interleave.py",
    "test_cell_fuzz_mask.py",
    "test_dz_in_gates_lengths.py",
    "test_hunt_hqa10.py",
    "test_norm_stabilizer_lengths.py",
    "test_numba_background.py",  # (subprocesses too)
    "test_grad_input_tail.py",
    "test_steady.py",
    "test_fast_fuzz.py",
    "test_steady_costs.py",
    "test_need_grad_input_rolled.py",
    "test_config_fuzz.py",
    "test_numba_slab_plan.py",
    "test_rolled_small_lstm.py",
    "test_numba_program.py",
    "test_numba_loop.py",
    "test_hunt_hqa5.py",
    "test_tap_watch.py",
    "test_pack_rows.py",
    "test_layout.py",
    "test_steady_entry.py",
    "test_merge_ys.py",
    "test_shifted_states.py",
    "test_numba_late_xs.py",
    "test_gate_rows_donation.py",
)
# Files that compile the same numba kernels (the same models: cell, sizes, dtype, options), run
# as ONE `--dist loadfile` work unit, on one worker one after the other: the first compiles,
# the next loads from the kernel cache. Apart, two workers could compile the same kernel at once
# (the cold profile of main: test_step_loop and test_step_fuse shared 17 kernels and compiled
# two of them twice, 14 s of CPU). Each group's files stand together in SLOW_FIRST.
SHARED = (
    ("test_step_loop.py", "test_step_fuse.py"),
    ("test_own_room.py", "test_batch_split.py", "test_own_bias.py", "test_own_threads.py"),
    ("test_dz_in_gates.py", "test_xs_in_slab.py"),
    # (the same models at the shared sizes of tests/sizes.py, hcold7)
    ("test_cells.py", "test_numba_program_layouts.py"),
    ("test_hunt_hqa8.py", "test_tap_room.py"),
)


def xdist_scope(nodeid: str) -> str:
    """The `--dist loadfile` work unit of a test: its file, or the first file of its SHARED
    group (pytest_xdist_make_scheduler)."""
    path = nodeid.split("::", 1)[0]
    head, _, name = path.rpartition("/")
    for group in SHARED:
        if name in group:
            return f"{head}/{group[0]}" if head else group[0]
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with each SHARED group one work unit (else xdist's own schedulers)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return SharedFileScheduling(config, log)


def pytest_configure(config):
    """The suite runs on the backend $TAPERNN_TEST_BACKEND names -- pinned: default numpy, not
    the library's default "auto" (which would move programs called 1,000+ times onto numba, with
    cold compiles in CI; tests/test_backend_default.py tests "auto" itself) -- (numba runs
    where it matters through the `backend` fixture and tests/test_backends.py: each distinct
    fused group costs a cold numba compilation). Subprocesses (the CLI tests) inherit it.
    numba kernels are compiled at their call sites' first calls (TAPERNN_NUMBA_BACKGROUND=0), so
    every test on numba runs its kernels from the first call; tests/test_numba_background.py tests
    the background compilation."""
    import tapernn as tn

    os.environ["TAPERNN_NUMBA_BACKGROUND"] = "0"
    # no compile children (backends/compile_child.py): a test's kernels compile where it calls
    # them (a cold CI has no core to spare; the own GEMM would run OpenBLAS until a child is
    # done); tests/test_hcold6_child.py turns them on
    os.environ["TAPERNN_COMPILE_CHILD"] = "0"
    # the background tests' packed step GEMMs from the switch call, as their few calls expect
    # (the default's later packed call: tests/test_hcold9_packed_call.py sets its own)
    os.environ["TAPERNN_NUMBA_PACKED_CALL"] = "2"
    # the layout rule's decisions (passes/layout_cache) go to a file of this session: tests that
    # fake the GEMM timing must not leave decisions in the user's cache, nor read theirs
    cache = os.path.join(tempfile.mkdtemp(prefix="tapernn-tests-"), "layout-rule.json")
    os.environ["TAPERNN_LAYOUT_CACHE"] = cache
    # and "auto" times nothing (the shape rule's batch-major wherever it would time): a timing
    # under load once chose feature-major where a test asserted a batch-major slab; the tests of
    # the timed rule turn it on (`layout_timed`)
    os.environ["TAPERNN_LAYOUT_TRIAL"] = "0"
    os.environ["TAPERNN_BACKEND"] = os.environ.get("TAPERNN_TEST_BACKEND", "numpy")
    tn.set_backend(os.environ["TAPERNN_BACKEND"])
    if getattr(config.option, "loadscopereorder", None):  # (pytest-xdist: our order, below)
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    """Files in SLOW_FIRST's order (a SHARED group's files together), then the others by number
    of tests (most first); a file's tests keep their order. (xdist's --dist loadfile sends files
    in this order; a run in one process keeps pytest's order.)"""
    if not hasattr(config, "workerinput") and config.getoption("dist", "no") == "no":
        return
    order = {name: k for k, name in enumerate(SLOW_FIRST)}
    rank = dict(order)
    for group in SHARED:  # (a group's files stand together, at its first file's rank)
        start = min(order.get(name, len(order)) for name in group)
        rank.update({name: start + k / 100 for k, name in enumerate(group)})
    count = Counter(item.path for item in items)
    first = {}  # (files whose tests are not together, as after -p randomly: as they come)
    for k, item in enumerate(items):
        first.setdefault(item.path, k)
    items.sort(
        key=lambda item: (
            rank.get(item.path.name, len(rank)),
            -count[item.path],
            first[item.path],
        )
    )


def pytest_unconfigure(config):
    cache = os.environ.get("TAPERNN_LAYOUT_CACHE", "")
    if os.path.basename(os.path.dirname(cache)).startswith("tapernn-tests-"):
        shutil.rmtree(os.path.dirname(cache), ignore_errors=True)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _backend_restored():
    """Every test ends on the backend it began on: one that called tn.set_backend("numba") and
    not back changed every later test of its worker (test_kernel_alone's plain compile then
    called numba's lone-op lowering: CI failed when --dist loadfile put such a file before it)."""
    import tapernn as tn

    before = tn.get_backend()
    yield
    if tn.get_backend() != before:
        tn.set_backend(before)


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    """Run the test under each backend (tn.set_backend), restoring the previous one after."""
    import tapernn as tn
    from tapernn.backends import numba_available

    if request.param == "numba" and not numba_available():
        pytest.skip("numba is not installed (pip install -e '.[fast]')")
    before = tn.get_backend()
    tn.set_backend(request.param)
    yield request.param
    tn.set_backend(before)


@pytest.fixture
def layout_timed(monkeypatch):
    """The "auto" layout rule times as for users (conftest turns it off for the session)."""
    monkeypatch.setenv("TAPERNN_LAYOUT_TRIAL", "1")


@pytest.fixture
def numba_now(monkeypatch):
    """The numba backend for one test, its kernels compiled at their call sites' first calls
    (TAPERNN_NUMBA_BACKGROUND=0: a loop splits from its second call); the previous backend after.
    A whole module: `pytestmark = pytest.mark.usefixtures("numba_now")`."""
    import tapernn as tn

    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "0")
    before = tn.get_backend()
    tn.set_backend("numba")
    yield
    tn.set_backend(before)


@contextlib.contextmanager
def packed_forced():
    """Programs compiled inside pack their step GEMMs as on an AVX-512 CPU (backends/packed.py's
    avx512f flag set to True, restored after: packed.isa() "avx512"): the packed kernel and its
    program rewrite are correct code on any x86 host (numba compiles the kernel's 512-bit vectors
    for the host; on AVX2 LLVM splits them, slower), so the tests of AVX-512's path run on AVX2
    machines too (which otherwise run AVX2's own kernel: tests/test_packed_isa.py)."""
    from tapernn import own_room
    from tapernn.backends import packed

    before = packed._avx512[0], own_room.PAYS[0]
    packed._avx512[0] = own_room.PAYS[0] = True  # (own_room's packed projection too: any vendor)
    try:
        yield
    finally:
        packed._avx512[0], own_room.PAYS[0] = before


@pytest.fixture(scope="module")
def packed_on():
    """packed_forced() for a whole module: `pytestmark = pytest.mark.usefixtures("packed_on")`."""
    with packed_forced():
        yield


@pytest.fixture
def packed_now():
    """packed_forced() for one test (a module whose other tests run as the CPU says)."""
    with packed_forced():
        yield


def optimised_subprocess(request) -> bool:
    """For a test of numba's optimised (-O3) machine code while this process compiles at another
    level (e.g. NUMBA_OPT=0, above): runs the test in a fresh interpreter at NUMBA_OPT=3
    and asserts it passed there; True. False when this process is at -O3: run the test here.
        if optimised_subprocess(request):
            return"""
    import subprocess
    import sys

    from numba.core import config

    if int(config.OPT) == 3:
        return False
    env = dict(os.environ, NUMBA_OPT="3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider"]
    argv.append(request.node.nodeid)
    proc = subprocess.run(argv, check=False, cwd=root, env=env, capture_output=True, text=True)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0 and "1 passed" in proc.stdout, tail
    return True


def load_tool(name: str):
    """tools/<name>.py as a module (tools/ is no package): for the tests of a tool."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "tools", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
