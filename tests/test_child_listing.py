"""compile_child._cached without a dispatcher: numba's index files found from one listing of the
folder per change of it (was a glob over the folder per job), what the glob found."""

import os
from pathlib import Path

from tapernn.backends import compile_child
from tapernn.backends.kernel_cache import numba_folders


def _touch(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"")


def _bump(folder: Path) -> None:
    """The folder's mtime one tick on (a file's creation does it, unless within the same tick)."""
    st = folder.stat()
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_an_index_file_is_found_for_its_module_and_function_only(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    directory = tmp_path / "kernels"
    (folder,) = numba_folders(directory)
    assert not compile_child._cached(None, [], "mod_a", "kernel", directory)  # (no folder)
    _touch(folder, "mod_a.kernel-12.py311.nbi")
    _touch(folder, "mod_a.kernel-12.py311.1.nbc")
    _touch(folder, "mod_b.other_kernel-3.py311.nbi")
    _bump(folder)
    assert compile_child._cached(None, [], "mod_a", "kernel", directory)
    assert compile_child._cached(None, [], "mod_b", "other_kernel", directory)
    assert not compile_child._cached(None, [], "mod_a", "other_kernel", directory)
    assert not compile_child._cached(None, [], "mod_b", "kernel", directory)
    assert not compile_child._cached(None, [], "mod_a", "kern", directory)  # (glob: "kern-*")


def test_a_file_added_later_is_seen_once_the_folder_changed(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    directory = tmp_path / "kernels"
    (folder,) = numba_folders(directory)
    _touch(folder, "mod_a.kernel-12.py311.nbi")
    _bump(folder)
    assert not compile_child._cached(None, [], "mod_c", "kernel", directory)
    _touch(folder, "mod_c.kernel-7.py311.nbi")
    _bump(folder)
    assert compile_child._cached(None, [], "mod_c", "kernel", directory)


def test_numba_cache_dir_is_read_too(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "user"))
    directory = tmp_path / "kernels"
    folders = numba_folders(directory)
    assert len(folders) == 2
    _touch(folders[1], "mod_d.kernel-1.py311.nbi")
    _bump(folders[1])
    assert compile_child._cached(None, [], "mod_d", "kernel", directory)
