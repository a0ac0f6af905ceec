"""tools/avx2_env.py: numba compiling for an AVX2 CPU on an AVX-512 one (BENCHMARKS.md "hisa"):
the feature string drops every AVX-512 / AMX feature and keeps the rest; under its environment a
loop with a select compiles with no AVX-512 register (no zmm, no mask register %k) where this
process, on an AVX-512 host, uses them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import load_tool

from tapernn.backends import numba_available

LOOP = """
import numpy as np
from numba import njit

@njit(error_model="numpy")
def pick(a, b, o):
    for i in range(a.shape[0]):
        o[i] = a[i] if a[i] > b[i] else b[i] * np.float32(3.0)

pick.compile("(float32[::1], float32[::1], float32[::1])")
print(pick.inspect_asm(pick.signatures[0]))
"""


def test_features_drop_avx512_and_amx_alone():
    tool = load_tool("avx2_env")
    host = {"avx2": True, "fma": True, "avx512f": True, "avx512vl": True, "amx-tile": True}
    host.update({"sse2": True, "avxvnni": True, "evex512": True, "xop": False})
    want = "-amx-tile,+avx2,-avx512f,-avx512vl,-avxvnni,-evex512,+fma,+sse2,-xop"
    assert tool.features(host) == want


def _asm(env: dict) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", LOOP], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_its_environment_compiles_without_avx512_registers(tmp_path):
    from llvmlite import binding

    tool = load_tool("avx2_env")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    name, features = tool.main.__globals__["features"], binding.get_host_cpu_features()
    asm = _asm(dict(env, NUMBA_CPU_NAME="znver3", NUMBA_CPU_FEATURES=name(features)))
    assert re.search(r"\bv\w+ps\s+.*%ymm", asm)  # (vectorised: 8 float32 a vector)
    assert not re.search(r"%zmm|%k\d", asm)
    if features.get("avx512f") and features.get("avx512vl"):  # (the host's own: AVX-512's)
        assert re.search(r"%zmm|%k\d", _asm(env))
