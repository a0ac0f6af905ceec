"""The numba backend (tapernn/backends): every fused op it lowers agrees with the NumPy backend
and the reference interpreter (1e-12 in float64), float32 stays float32, kernels are shared by
structure and cached on disk across processes, and a group it cannot lower runs on NumPy."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tapernn as tn
from tapernn.backends import numba_available
from tapernn.interpret import interpret

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")
ROOT = Path(__file__).resolve().parents[1]


def every_op(x, b, c, m):
    """Every op the numba backend lowers, with row (b: (4,)), column (m: (3, 1)) and 0-d (c)
    broadcasting, in one fused group."""
    s = tn.sigmoid(x + b) * tn.tanh(x * c) - tn.maximum(x, m) / (tn.exp(-x) + 1.0)
    s = s + tn.minimum(x, b) * tn.relu(x - 0.25) + tn.sqrt(x * x + 0.5) - tn.abs(b) * m
    s = s + tn.log(x * x + 1.0) + tn.add_n([x, x * m, x + b]) + tn.cast(x > m, x.dtype) * 2.0
    return s * tn.exp(-(tn.tanh(s) ** 2.0))


def _arrays(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in ((3, 4), (4,), (), (3, 1))]


def _both(fn, arrays):
    g = tn.trace(fn, *arrays)
    return g, [tn.compile(g, backend=b) for b in ("numpy", "numba")]


def test_every_op_agrees_with_numpy_and_the_interpreter_float64():
    arrays = _arrays(np.float64)
    g, (npy, nba) = _both(every_op, arrays)
    assert nba.report.backend == "numba" and nba.report.compiled_kernels >= 1
    assert not nba.report.fallbacks and "numba" in str(nba.report)
    assert "nk" in nba.source  # the fused group is a call of the compiled kernel
    ref = interpret(g, *arrays)[0]
    np.testing.assert_allclose(nba(*arrays), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nba(*arrays), npy(*arrays), rtol=1e-12, atol=1e-12)


def test_float32_stays_float32(monkeypatch):
    from tapernn.backends import numba_backend

    kept = tn.compile(tn.trace(every_op, *_arrays(np.float32)), backend="numba")
    assert "kept on NumPy: float32 log/power" in kept.report.fallbacks[0]
    monkeypatch.setattr(numba_backend, "SLOW_FLOAT32_OPS", frozenset())  # lower them anyway
    # (and tanh through libm: backends/vecmath.py's float32 tanh computes in float64 on purpose,
    # tests/test_vecmath.py)
    monkeypatch.setattr(numba_backend, "VECTOR_FLOAT32", {})
    arrays = _arrays(np.float32)
    g, (npy, nba) = _both(every_op, arrays)
    out = nba(*arrays)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, interpret(g, *arrays)[0], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(out, npy(*arrays), rtol=2e-5, atol=2e-5)
    kernel = next(v for k, v in nba.program.fn.__kwdefaults__.items() if k.startswith("nk"))
    for sig in kernel.signatures:  # no float64 anywhere in the typed kernel
        assert all("float64" not in str(t) for t in sig), sig
    import contextlib
    import io

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        kernel.inspect_types()
    assert "float64" not in text.getvalue()


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-14), (np.float32, 1e-6)])
def test_sigmoid_is_exact_in_both_tails(dtype, rtol):
    # the tanh form 0.5 * tanh(0.5 a) + 0.5 (the NumPy float32 lowering before issue 15) gives 0 at
    # a = -30, where sigma is 9.4e-14
    x = np.array([-700.0, -80.0, -30.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 30.0, 80.0, 700.0], dtype)
    g = tn.trace(lambda a: tn.sigmoid(a * 1.0) * 1.0, x)
    got = tn.compile(g, backend="numba")(x)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        exact = np.where(x64 >= 0, 1 / (1 + np.exp(-x64)), np.exp(x64) / (1 + np.exp(x64)))
    assert got.dtype == dtype and got[2] > 0
    np.testing.assert_allclose(got, exact.astype(dtype), rtol=rtol, atol=0)


def test_kernels_are_shared_by_structure_not_size():
    from tapernn.backends import numba_backend

    small = tn.compile(tn.trace(every_op, *_arrays(np.float64)), backend="numba")
    before = len(numba_backend._kernels)
    rng = np.random.default_rng(1)
    big = [rng.standard_normal(s) for s in ((30, 40), (40,), (), (30, 1))]
    large = tn.compile(tn.trace(every_op, *big), backend="numba")
    assert len(numba_backend._kernels) == before  # same expression signature: same kernel

    def kernels(compiled):  # a call site's bound name: the kernel once called
        return [v for n, v in compiled.program.fn.__kwdefaults__.items() if n.startswith("nk")]

    assert [s.handle for s in kernels(small)] == [s.handle for s in kernels(large)]
    g = tn.trace(every_op, *big)
    np.testing.assert_allclose(large(*big), interpret(g, *big)[0], rtol=1e-12, atol=1e-12)
    small(*_arrays(np.float64))
    assert kernels(small) == kernels(large) and callable(kernels(large)[0].py_func)


def test_a_group_numba_cannot_lower_runs_on_numpy_and_is_reported(monkeypatch):
    from tapernn.backends import numba_backend

    xi = np.arange(12).reshape(3, 4)
    c = tn.compile(tn.trace(lambda a: a * 3 + a, xi), backend="numba")  # int64: not lowered
    assert c.report.fallbacks and "dtype int64" in c.report.fallbacks[0]
    np.testing.assert_array_equal(c(xi), xi * 4)

    def broken(source):
        raise RuntimeError("simulated compile failure")

    monkeypatch.setattr(numba_backend, "_load", broken)
    monkeypatch.setattr(numba_backend, "_kernels", {})
    x = _arrays(np.float64, seed=3)
    g = tn.trace(every_op, *x)
    c = tn.compile(g, backend="numba")
    assert c.report.fallbacks and "simulated compile failure" in c.report.fallbacks[0]
    assert "on NumPy" in str(c.report)
    np.testing.assert_allclose(c(*x), interpret(g, *x)[0], rtol=1e-12, atol=1e-12)


def test_set_backend_and_bad_names():
    before = tn.get_backend()
    try:
        tn.set_backend("numpy")
        x = _arrays(np.float64)
        assert tn.compile(tn.trace(every_op, *x)).report.backend == "numpy"
        tn.set_backend("numba")
        assert tn.compile(tn.trace(every_op, *x)).report.backend == "numba"
        with pytest.raises(tn.TapernnError, match="expected one of"):
            tn.set_backend("cuda")
        # (PlanOptions checks the name when made: hqa7)
        with pytest.raises(tn.TapernnError, match="'numpy', 'numba', 'auto'.*got 'jax'"):
            tn.compile(tn.trace(every_op, *x), backend="jax")
    finally:
        tn.set_backend(before)


_CHILD = """
import numpy as np, tapernn as tn
from tapernn.backends import numba_backend
x = np.linspace(-3, 3, 12).reshape(3, 4)
c = tn.compile(tn.trace(lambda a: tn.tanh(a) * tn.sigmoid(a) + a, x), backend="numba")
assert abs(c(x) - (np.tanh(x) / (1 + np.exp(-x)) + x)).max() < 1e-12
k = next(v for n, v in c.program.fn.__kwdefaults__.items() if n.startswith("nk"))
print(sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()))
"""


def test_kernels_are_cached_on_disk_across_processes(tmp_path):
    env = dict(os.environ, TAPERNN_KERNEL_CACHE=str(tmp_path), PYTHONPATH=str(ROOT))
    runs = [
        subprocess.run(
            [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs[0] == ["0", "1"]  # compiled, written to the cache
    assert runs[1] == ["1", "0"]  # the second process loads it: no compilation
    assert len(list(tmp_path.rglob("tapernn_k*.py"))) == 1  # (below -O3: in opt<level>/)


def test_a_changed_intrinsics_module_changes_every_kernels_cache_name(monkeypatch, tmp_path):
    # numba's disk cache checks only a kernel module's own file: a kernel whose text is the same
    # but whose imported intrinsics changed loaded the old machine code (found by htiny4)
    from tapernn.backends import numba_backend as nb

    source = "def kernel(x):\n    return x\n"
    monkeypatch.setattr(nb, "_imported_digest", None)
    before = nb._module_name(source)
    assert nb._module_name(source) == before  # stable
    fake = tmp_path / "numba_intrinsics.py"
    real = Path(nb.__file__).resolve().parent / "numba_intrinsics.py"
    fake.write_bytes(real.read_bytes() + b"\n# changed\n")
    monkeypatch.setattr(nb, "_IMPORTED", (str(fake),))  # (an absolute path joins as itself)
    monkeypatch.setattr(nb, "_imported_digest", None)
    assert nb._module_name(source) != before


def test_kernels_compiled_with_and_without_scipy_have_other_cache_names(monkeypatch):
    # numba's matmul calls scipy's BLAS, looked up when a cached kernel runs: a kernel compiled
    # where scipy is installed, loaded from a shared cache where it is not, aborted the process
    from tapernn.backends import numba_backend as nb

    source = "def kernel(x):\n    return x\n"
    real = importlib.util.find_spec
    names = []
    for present in (True, False):

        def find_spec(name, *a, _present=present):
            if name == "scipy":
                return object() if _present else None
            return real(name, *a)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        monkeypatch.setattr(nb, "_imported_digest", None)
        names.append(nb._module_name(source))
    monkeypatch.undo()
    assert names[0] != names[1]
