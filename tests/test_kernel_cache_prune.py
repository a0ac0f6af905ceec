"""The numba kernel cache on disk: cache_info / clear_cache / prune_cache (least recently used,
numba's index before its data before the .py, other files untouched), `tapernn cache`, and
loading kernels while another process clears the cache (a removed module compiles again)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tapernn.apps.cache_cli import parse_size
from tapernn.apps.cli import main
from tapernn.backends import cache_info, clear_cache, kernel_cache, numba_available, prune_cache
from tapernn.errors import ArgumentError

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400.0


def _module(directory: Path, name: str, size: int, used: float, nbc: int = 1) -> list[Path]:
    """A fake kernel module: its .py and numba's index and `nbc` data files, last used `used`."""
    cache = directory / "__pycache__"
    cache.mkdir(parents=True, exist_ok=True)
    files = [directory / f"{name}.py", cache / f"{name}.kernel-66.py311.nbi"]
    files += [cache / f"{name}.kernel-66.py311.{i + 1}.nbc" for i in range(nbc)]
    for path in files:
        path.write_bytes(b"x" * size)
        os.utime(path, (used, used))
    return files


def _name(i: int) -> str:
    return f"tapernn_k6_{i:020x}"


def _fill(root: Path) -> dict[str, list[Path]]:
    now = time.time()
    made = {}
    for i, days in enumerate((30, 2, 10, 0.01)):  # 4 modules at the root, by age
        made[_name(i)] = _module(root, _name(i), 1000, now - days * DAY)
    made["opt0"] = _module(root / "opt0", _name(9), 500, now - 5 * DAY, nbc=2)
    (root / "README").write_text("not ours")  # other files are never touched
    (root / "__pycache__" / "other.cpython-311.pyc").write_bytes(b"y" * 50)
    return made


def test_cache_info_counts_modules_and_bytes_per_level(tmp_path):
    _fill(tmp_path)
    info = cache_info(tmp_path)
    assert info.path == tmp_path
    assert [(lv.name, lv.modules, lv.bytes) for lv in info.levels] == [
        ("O3", 4, 4 * 3000),
        ("opt0", 1, 4 * 500),
    ]
    assert (info.modules, info.bytes) == (5, 14000)
    assert time.time() - info.oldest_use == pytest.approx(30 * DAY, abs=60)
    assert time.time() - info.newest_use == pytest.approx(0.01 * DAY, abs=60)
    empty = cache_info(tmp_path / "absent")
    assert (empty.modules, empty.bytes, empty.oldest_use) == (0, 0, None)


def test_prune_removes_the_least_recently_used_whole(tmp_path):
    made = _fill(tmp_path)
    removed = prune_cache(max_bytes=7000, path=tmp_path)  # 14000 -> 30 d, 10 d, opt0's 5 d go
    assert (removed.modules, removed.bytes) == (3, 3000 + 3000 + 2000)
    gone = [_name(0), _name(2), "opt0"]
    for key, files in made.items():
        assert all(p.exists() != (key in gone) for p in files), key
    assert (tmp_path / "README").exists()
    assert (tmp_path / "__pycache__" / "other.cpython-311.pyc").exists()
    assert prune_cache(max_bytes=6000, path=tmp_path).modules == 0  # already within


def test_prune_older_than_days_and_both(tmp_path):
    made = _fill(tmp_path)
    assert prune_cache(older_than_days=7, path=tmp_path).modules == 2  # 30 d and 10 d
    assert not made[_name(0)][0].exists() and not made[_name(2)][0].exists()
    assert made["opt0"][0].exists()
    removed = prune_cache(max_bytes=3000, older_than_days=3, path=tmp_path)  # opt0, then 2 d
    assert removed.modules == 2 and made[_name(3)][0].exists()
    assert cache_info(tmp_path).bytes == 3000


def test_a_used_module_is_recent_again(tmp_path):
    made = _fill(tmp_path)
    text = made[_name(0)][0].read_bytes()
    before = made[_name(0)][0].stat().st_mtime_ns
    kernel_cache._mark_used(made[_name(0)][0])  # what import_written does at a load
    assert made[_name(0)][0].stat().st_mtime_ns == before  # (the write time is kept)
    prune_cache(max_bytes=7000, path=tmp_path)
    assert made[_name(0)][0].read_bytes() == text and not made[_name(1)][0].exists()


def test_clear_removes_every_module_index_first_and_leaves_young_temporaries(tmp_path, monkeypatch):
    made = _fill(tmp_path)
    young = tmp_path / f".{_name(7)}.py.123@host.abc.tmp"  # a write in flight
    old = tmp_path / "__pycache__" / f"{_name(1)}.kernel-66.py311.nbi.tmp.0123abcd"
    young.write_bytes(b"z")
    old.write_bytes(b"z")
    os.utime(old, (time.time() - 2 * 3600,) * 2)
    order = []
    unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", lambda p, *a: (order.append(p.name), unlink(p, *a)))
    removed = clear_cache(tmp_path)
    assert (removed.modules, removed.bytes, removed.in_use) == (5, 14000 + 1, 1)
    assert not any(p.exists() for files in made.values() for p in files)
    assert young.exists() and not old.exists() and (tmp_path / "README").exists()
    for i in (0, 2, 3):  # per module: index, data, .py
        mine = [n for n in order if n.startswith(_name(i))]
        assert [n.split(".")[-1] for n in mine] == ["nbi", "nbc", "py"], mine
    assert cache_info(tmp_path).modules == 1  # (the young temporary's module)


def test_prune_needs_a_bound_and_says_so(tmp_path):
    for kwargs in ({}, {"max_bytes": -1}, {"older_than_days": float("nan")}, {"max_bytes": True}):
        with pytest.raises(ArgumentError, match="prune_cache: expected"):
            prune_cache(path=tmp_path, **kwargs)


def test_a_cache_path_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path / "f"))
    for argv in (["cache"], ["cache", "--clear"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Not a directory; expected a folder" in err and err.count("\n") == 1, err
    assert (tmp_path / "f").read_text() == "x"


def test_parse_size():
    assert parse_size("0") == 0 and parse_size("123") == 123
    assert parse_size("500M") == 500 << 20 and parse_size("2g") == 2 << 30
    assert parse_size("1.5GiB") == 3 << 29 and parse_size("10KB") == 10240


def test_cache_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path))
    _fill(tmp_path)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "total       5 modules" in out and "opt0" in out
    assert main(["cache", "--prune", "7000", "--older-than", "20"]) == 0
    assert "removed 3 modules, 7.8 KiB" in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0
    assert "removed 2 modules" in capsys.readouterr().out and cache_info().modules == 0
    for argv, says in (
        (["cache", "--prune", "lots"], "expected a size such as 500M"),
        (["cache", "--older-than", "-2"], "expected a number of days >= 0"),
        (["cache", "--clear", "--prune", "1G"], "give it without --prune"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err


def test_cache_command_without_numba(tmp_path):
    code = (
        "import sys; sys.modules['numba'] = None\n"  # (find_spec then raises: not installed)
        "import importlib.util as u\n"
        "real = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'numba' else real(name, *a)\n"
        "from tapernn.apps.cli import main; sys.exit(main(['cache']))\n"
    )
    env = dict(os.environ, TAPERNN_KERNEL_CACHE=str(tmp_path), PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert "note: numba is not installed" in run.stdout and "total       0" in run.stdout


def test_import_written_writes_again_a_module_removed_while_it_loads(tmp_path, monkeypatch):
    """The .py removed between its write and its import (another process's clear)."""
    removed = []
    mark = kernel_cache._mark_used

    def remove_first(path):
        mark(path)
        if not removed:
            removed.append(path)
            path.unlink()

    monkeypatch.setattr(kernel_cache, "_mark_used", remove_first)
    name = "tapernn_t_" + "ab" * 10
    module = kernel_cache.import_written(tmp_path, name, b"VALUE = 42\n")
    assert removed and module.VALUE == 42 and (tmp_path / f"{name}.py").exists()
    assert sys.modules.pop(name) is module


_CHILD = """
import sys, time
import numpy as np
from tapernn.backends import numba_backend
prog = (("mul", (0, 1), (), (64,), "float64"), ("tanh", (-1,), (), (64,), "float64"),
        ("add", (-2, 0), (), (64,), "float64"))  # (-1 - j: instruction j)
ops = [((64,), np.dtype("float64"))] * 2
source = numba_backend.kernel_source(prog, ops, (64,))
name = numba_backend._module_name(source)
x, y = np.linspace(-2, 2, 64), np.linspace(1, 3, 64)
want, loads, end = None, 0, time.time() + float(sys.argv[1])
while time.time() < end or loads < 3:
    sys.modules.pop(name, None)  # (a fresh import each time: numba's cache read again)
    kernel = numba_backend._load(source)
    out = np.empty(64)
    kernel(x, y, out)
    if want is None:  # (vecmath's tanh: within an ulp of NumPy's; then the same bits always)
        assert np.allclose(out, np.tanh(x * y) + x, rtol=1e-15, atol=0), out
        want = out
    assert np.array_equal(out, want), abs(out - want).max()
    loads += 1
    time.sleep(0.1)
print("loads", loads)
"""


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_kernels_load_while_another_process_clears_the_cache(tmp_path, monkeypatch):
    """A child re-imports a kernel every ~0.1 s (numba's cache read, or a compile when it was
    removed) while this process clears the cache all the time, leaving only modules marked used in
    the last 0.05 s (IN_USE, 10 s by default, shortened so that most loads find it removed)."""
    monkeypatch.setattr(kernel_cache, "IN_USE", 0.05)
    env = dict(os.environ, TAPERNN_KERNEL_CACHE=str(tmp_path), PYTHONPATH=str(ROOT))
    env.pop("NUMBA_OPT", None)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "8"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    clears = removed = 0
    while child.poll() is None:
        removed += clear_cache(tmp_path).modules
        clears += 1
        time.sleep(0.002 * (clears % 5))
    out, err = child.communicate()
    assert child.returncode == 0, err.decode()[-3000:]
    assert int(out.split()[1]) >= 3 and removed >= 3, (out, removed, clears)


def test_numba_files_under_numba_cache_dir_belong_to_their_modules(tmp_path, monkeypatch):
    """With $NUMBA_CACHE_DIR set numba keeps a module's index and data there, in a folder named
    for the kernels' folder (its own locator, the oracle): cache_info counts them with the
    module, clear_cache removes them (before: left there, and two kernel-cache tests failed)."""
    kernels, user = tmp_path / "kernels", tmp_path / "numba"
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert kernel_cache.numba_folders(kernels) == (kernels / "__pycache__",)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(user))
    mine, theirs = kernel_cache.numba_folders(kernels)
    assert mine == kernels / "__pycache__" and theirs.parent == user
    if numba_available():
        from numba.core.caching import UserProvidedCacheLocator

        assert theirs.name == UserProvidedCacheLocator.get_suitable_cache_subpath(
            str(kernels / f"{_name(7)}.py")
        )
    theirs.mkdir(parents=True)
    made = _module(kernels, _name(7), 100, time.time() - DAY)
    for path in made[1:]:
        path.rename(theirs / path.name)
    (theirs / "other.nbi").write_bytes(b"z")  # (not a kernel's: left)
    info = cache_info(kernels)
    assert (info.modules, info.bytes) == (1, 300)
    assert clear_cache(kernels).modules == 1
    assert sorted(p.name for p in theirs.iterdir()) == ["other.nbi"]
    assert not (kernels / f"{_name(7)}.py").exists()


def test_modules_in_use_are_left(tmp_path):
    made = _fill(tmp_path)
    kernel_cache._mark_used(made[_name(0)][0])  # a process loads it now
    removed = clear_cache(tmp_path)
    assert (removed.modules, removed.in_use) == (4, 1)
    assert all(p.exists() for p in made[_name(0)])


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_a_kernel_removed_between_its_check_and_its_import_compiles_again(tmp_path, monkeypatch):
    """Another process's prune removes the kernel's .py (and numba's files) right after _load
    found it there: the load writes it again and compiles (on main: FileNotFoundError)."""
    import importlib.util

    from tapernn.backends import numba_backend

    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path))
    prog = (("mul", (0, 1), (), (8,), "float64"), ("add", (-1, 0), (), (8,), "float64"))
    source = numba_backend.kernel_source(prog, [((8,), np.dtype("float64"))] * 2, (8,))
    name = numba_backend._module_name(source)
    x, y = np.linspace(-2, 2, 8), np.linspace(1, 3, 8)
    first = numba_backend._load(source)(x, y, np.empty(8))  # written, compiled, cached
    assert np.array_equal(first, x * y + x)
    sys.modules.pop(name)
    real, pruned = importlib.util.spec_from_file_location, []

    def prune_now(module_name, path, *args, **kwargs):
        if module_name == name and not pruned:
            folders = (tmp_path, *kernel_cache.numba_folders(tmp_path))  # (+ $NUMBA_CACHE_DIR's)
            for old in [path for folder in folders for path in folder.glob(f"{name}.*")]:
                os.utime(old, (time.time() - 3600,) * 2)  # (last used an hour ago)
            pruned.append(clear_cache(tmp_path).modules)
        return real(module_name, path, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "spec_from_file_location", prune_now)
    again = numba_backend._load(source)
    assert pruned[0] >= 1 and (tmp_path / f"{name}.py").exists()
    assert np.array_equal(again(x, y, np.empty(8)), first)
    assert again.stats.cache_misses  # (compiled again: its numba files went too)


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_the_packed_drivers_module_removed_before_its_import_is_written_again(
    tmp_path, monkeypatch
):
    """packed._kernel_module loads through import_written too: another process's clear that
    lands between its write and its import costs a rewrite, not a FileNotFoundError."""
    import importlib.util

    from tapernn.backends import packed

    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(packed, "_MODULE_NAMES", {})  # (the digest computed again)
    name = packed._kernel_module().__name__  # this process's module, from the shared cache
    monkeypatch.delitem(sys.modules, name)  # (restored after the test)
    real, cleared = importlib.util.spec_from_file_location, []

    def clear_now(module_name, path, *args, **kwargs):
        if module_name == name and not cleared:
            os.utime(path, (time.time() - 3600,) * 2)  # (last used an hour ago)
            cleared.append(clear_cache(tmp_path).modules)
        return real(module_name, path, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "spec_from_file_location", clear_now)
    module = packed._kernel_module()
    assert cleared == [1] and module.__name__ == name
    assert Path(module.__file__) == tmp_path / f"{name}.py" and Path(module.__file__).exists()
    assert callable(module.pack_cols)
