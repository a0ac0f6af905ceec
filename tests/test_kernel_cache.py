"""The numba kernel cache (tapernn/backends/numba_backend.py) never gives a wrong answer and heals:
a truncated numba cache file makes the kernel compile anew (and the next load hit the new
file), a kernel module whose text is not the kernel's is rewritten before it is imported."""

import numpy as np
import pytest

import tapernn as tn
from tapernn.backends import kernel_cache, numba_available, numba_backend

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")


def _fn(a):
    return a * a - a * 0.5  # a structure no other test compiles


def _fresh_run(monkeypatch, x):
    """Compile and call _fn as a new process would: no kernel handle in memory."""
    monkeypatch.setattr(numba_backend, "_kernels", {})
    c = tn.compile(tn.trace(_fn, x), backend="numba")
    got = c(x)
    (handle,) = numba_backend._kernels.values()
    return got, handle


@pytest.fixture
def x(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPERNN_KERNEL_CACHE", str(tmp_path))
    return np.linspace(-3, 3, 24).reshape(4, 6)


@pytest.mark.parametrize("numba_cache_dir", [False, True])
def test_a_truncated_numba_cache_file_recompiles_the_kernel(
    x, monkeypatch, tmp_path, numba_cache_dir
):
    """Also with $NUMBA_CACHE_DIR set, where numba keeps the files elsewhere (before: the kernel
    stayed on NumPy, "numba failed: UnpicklingError", its bad file never dropped)."""
    import numba.core.config

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", "")
    if numba_cache_dir:  # (numba reads its config at import: both, as a process started so)
        monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
        monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(tmp_path / "numba"))
    want = x * x - x * 0.5
    got, handle = _fresh_run(monkeypatch, x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    folders = kernel_cache.numba_folders(numba_backend.cache_dir())  # (+ $NUMBA_CACHE_DIR's)
    data = [path for folder in folders for path in folder.glob("*.nbc")]
    assert data and not handle.error
    for path in data:
        path.write_bytes(path.read_bytes()[:100])
    got, handle = _fresh_run(monkeypatch, x)
    assert not handle.error  # compiled anew, not left on NumPy
    assert sum(handle.kernel.stats.cache_misses.values()) == 1
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    got, handle = _fresh_run(monkeypatch, x)  # the rewritten cache file is whole
    assert sum(handle.kernel.stats.cache_hits.values()) == 1 and not handle.error
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_a_kernel_module_with_other_text_is_rewritten(x, monkeypatch):
    _fresh_run(monkeypatch, x)
    (module,) = numba_backend.cache_dir().glob("tapernn_k*.py")
    text = module.read_text()
    module.write_text(text.replace("out[i0, i1] = ", "out[i0, i1] = 2 * "))  # a wrong kernel
    got, handle = _fresh_run(monkeypatch, x)
    assert module.read_text() == text and not handle.error
    np.testing.assert_allclose(got, x * x - x * 0.5, rtol=1e-12, atol=1e-12)
