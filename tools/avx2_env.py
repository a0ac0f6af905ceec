"""numba's code generation for an AVX2 CPU on an AVX-512 one (BENCHMARKS.md "hisa"): prints the
environment that makes numba compile for AMD Zen 3 (the AVX2 + FMA machine of "hci" / "havx2")
with this host's features minus every AVX-512 / AMX one, so the tests of machine code and of
the packed kernels' AVX2 path run on the code LLVM emits there:

    env $(python tools/avx2_env.py) python -m pytest -p no:xdist tests/test_vecmath.py ...

Use an empty kernel cache too ($TAPERNN_KERNEL_CACHE, $NUMBA_CACHE_DIR): numba's cache index
keys machine code by CPU name and features, so nothing compiled either way is loaded by the
other, but a shared cache fills with both. tapernn's own choice of kernel (backends/packed.py
isa(), from /proc/cpuinfo) still says "avx512": the tests that force a geometry
(test_packed_isa) run both; everything else runs AVX-512's kernel compiled for Zen 3 (LLVM
splits its vectors), as on that machine the tests forcing it (conftest.packed_forced) did.

Run: python tools/avx2_env.py [--cpu znver3]
"""

from __future__ import annotations

import argparse

# LLVM features an AVX2 CPU lacks (prefixes): AVX-512's, AMX's, and the later VEX encodings
DROPPED = ("avx512", "amx", "avxvnni", "avxifma", "avxneconvert", "avx10", "evex512")


def features(host: dict[str, bool]) -> str:
    """LLVM's feature string: `host`'s features, every one in DROPPED off."""
    return ",".join(
        ("+" if on and not name.startswith(DROPPED) else "-") + name
        for name, on in sorted(host.items())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", default="znver3", help="LLVM's CPU name (default znver3)")
    args = parser.parse_args(argv)
    from llvmlite import binding

    print(
        f"NUMBA_CPU_NAME={args.cpu} NUMBA_CPU_FEATURES={features(binding.get_host_cpu_features())}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
