"""The layout rule's cost (issue 16: compile <= 0.2 s): decisions kept on disk across processes
($TAPERNN_LAYOUT_CACHE; a corrupt, foreign or unwritable cache is ignored, never a crash), each
loop body's whole step timed once per (body, dtype, threads, backend)."""

import json
import os
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest

import tapernn as tn
from tapernn.passes import layout_rule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh decision file, an empty process cache, and the step timing recorded and faked
    (`cache.ratio`: feature-major time / batch-major time; `cache.calls`: the first recurrent
    GEMM of each timed body)."""
    path = tmp_path / "layout-rule.json"
    monkeypatch.setenv("TAPERNN_LAYOUT_CACHE", str(path))
    monkeypatch.setenv("TAPERNN_LAYOUT_TRIAL", "1")  # (conftest: off for the session)
    monkeypatch.setattr(layout_rule, "_DECIDED", {})

    class Fake:
        ratio = 0.5
        calls: ClassVar[list] = []
        file = path

    def fake(body, nc, nx, backend):
        Fake.calls.append(layout_rule.recurrent_gemms(body, nc)[0])
        return [(1.0, Fake.ratio)] * 3

    monkeypatch.setattr(layout_rule, "_TIMER", [fake])
    # the recurrent GEMMs' pre-filter favours feature-major: the whole-step trial runs
    monkeypatch.setattr(layout_rule, "gemm_times", lambda *a: (1e-3, 0.5e-3))
    Fake.calls = []
    return Fake


def body(b=32, k=64, n=256, gemms=1):
    """A loop body whose carry h (b, k) feeds `gemms` recurrent GEMMs h @ U_j, U_j (k, n)."""
    h, u = np.ones((b, k)), np.ones((k, n))

    def step(h, u):
        z = h @ u
        for _ in range(gemms - 1):
            z = z + h @ (u * 2.0)
        return [tn.tanh(z)[:, :k]]

    return tn.trace(step, h, u)


def test_a_second_process_reads_the_decision(cache):
    pick, _ = layout_rule.choose(body(), 1)
    assert pick == "feature" and len(cache.calls) == 1  # (faked)
    data = json.loads(cache.file.read_text())
    assert isinstance(data, dict) and data
    # a fresh interpreter with the same shapes reads it: its timing would fail the test
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "from test_layout_cache import body\n"
        "from tapernn.passes import layout_rule\n"
        "def boom(*a): raise SystemExit('timed again')\n"
        "layout_rule.set_step_timer(boom)\n"
        "print(*layout_rule.choose(body(), 1), sep='|')\n"
    )
    env = dict(os.environ, TAPERNN_LAYOUT_CACHE=str(cache.file), PYTHONPATH=ROOT)
    run = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    pick, why = run.stdout.strip().split("|")
    assert pick == "feature" and "earlier process" in why


@pytest.mark.parametrize(
    "content",
    [b"\x00\xffnot json{", b'{"format": "tapernn-layout-rule/1", "entr', b"[1, 2, 3]", b'"x"'],
    ids=["binary", "truncated", "a list", "a string"],
)
def test_a_corrupt_cache_file_is_ignored_and_replaced(cache, content):
    cache.file.write_bytes(content)
    pick, _ = layout_rule.choose(body(), 1)
    assert pick == "feature" and cache.calls  # timed, no crash
    layout_rule._DECIDED.clear()
    cache.calls.clear()
    assert layout_rule.choose(body(), 1)[0] == "feature"
    assert not cache.calls  # read back from the rewritten file
    json.loads(cache.file.read_text())


def test_entries_of_another_format_or_machine_are_not_used(cache, monkeypatch):
    from tapernn.passes import layout_cache

    layout_rule.choose(body(), 1)
    data = json.loads(cache.file.read_text())
    layout_rule._DECIDED.clear()
    cache.calls.clear()
    cache.file.write_text(json.dumps(dict(data, format="tapernn-layout-rule/0")))
    cache.ratio = 1.2
    assert layout_rule.choose(body(), 1)[0] == "batch" and cache.calls  # timed again
    layout_rule._DECIDED.clear()
    cache.calls.clear()
    monkeypatch.setattr(layout_cache, "machine", lambda: "another machine")
    cache.ratio = 0.5
    assert layout_rule.choose(body(), 1)[0] == "feature" and cache.calls
    # both machines' decisions are kept side by side in the one file
    assert len(json.loads(cache.file.read_text())["entries"]) == 2


def test_an_unwritable_cache_or_off_is_no_crash_and_no_file(cache, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TAPERNN_LAYOUT_CACHE", str(blocker / "layout-rule.json"))
    assert layout_rule.choose(body(), 1)[0] == "feature"
    monkeypatch.setenv("TAPERNN_LAYOUT_CACHE", "off")
    layout_rule._DECIDED.clear()
    assert layout_rule.choose(body(), 1)[0] == "feature"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written


def test_the_file_is_written_whole_with_no_temporaries_left(cache):
    for k in (64, 96, 128):
        layout_rule.choose(body(k=k), 1)
    assert [p.name for p in cache.file.parent.iterdir()] == [cache.file.name]
    assert len(json.loads(cache.file.read_text())["entries"]) == 3


def test_a_body_is_timed_once_and_its_gemms_shown(cache):
    cache.ratio = 1.2
    pick, why = layout_rule.choose(body(gemms=4), 1)
    assert pick == "batch" and cache.calls == [(32, 64, 256)]
    assert "4 x (32, 64) @ (64, 256)" in why and "deciding took" in why
    assert layout_rule.choose(body(gemms=4), 1)[0] == "batch"
    assert cache.calls == [(32, 64, 256)]  # the process's decision: not timed again


def test_the_decision_is_per_body_and_backend_not_only_per_gemm(cache):
    """Two bodies with the same recurrent GEMM but other elementwise work, or one body on two
    backends, are decided apart (the GEMM-only key shared them)."""
    layout_rule.choose(body(), 1)
    h, u = np.ones((32, 64)), np.ones((64, 256))
    other = tn.trace(lambda h, u: [tn.sigmoid(h @ u)[:, :64] * 2.0], h, u)
    layout_rule.choose(other, 1)
    layout_rule.choose(body(), 1, backend="numba")
    layout_rule.choose(body(), 1)
    assert len(cache.calls) == 3
    assert len(json.loads(cache.file.read_text())["entries"]) == 3


def test_the_suite_never_writes_the_users_cache():
    """conftest points $TAPERNN_LAYOUT_CACHE at a temporary file for the whole session."""
    from tapernn.passes import layout_cache

    home = os.path.join(os.path.expanduser("~"), ".cache")
    assert not str(layout_cache.cache_path()).startswith(home)


def test_the_key_does_not_depend_on_how_many_openblas_pools_are_loaded(monkeypatch):
    """A process that has loaded a second OpenBLAS (scipy's, through numba) with the same thread
    count keys its decisions as one without it (before: (2, 2) against (2,), so the suite's
    later processes timed again after a numba test had loaded scipy)."""
    from tapernn import blas

    def pools(n):
        return lambda: [(None, lambda: 2)] * n

    keys = []
    for n in (1, 2):
        monkeypatch.setattr(blas, "_openblas_libraries", pools(n))
        keys.append(layout_rule._blas())
    assert keys[0] == keys[1] == (2,)


def test_the_machine_key_ignores_other_blas_libraries_loaded():
    """A process that has loaded scipy's OpenBLAS (numba's matmul does) keys the machine as one
    that has not (before: every mapped BLAS path was part of it, so the suite re-timed after a
    numba test and test_a_second_process_reads_the_decision failed)."""
    pytest.importorskip("scipy.linalg")
    code = "{}from tapernn.passes import layout_cache; print(layout_cache.machine())"
    env = dict(os.environ, PYTHONPATH=ROOT)
    keys = [
        subprocess.run(
            [sys.executable, "-c", code.format(first)],
            check=True,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        ).stdout
        for first in ("", "import scipy.linalg; scipy.linalg.blas.dgemm(1.0, [[1.0]], [[1.0]]); ")
    ]
    assert keys[0] == keys[1] and keys[0].strip()
