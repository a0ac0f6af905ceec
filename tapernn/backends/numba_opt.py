"""numba below its default optimisation level (NUMBA_OPT=0, 1 or 2, e.g. `NUMBA_OPT=0 pytest`:
~30 % less CPU per cold compile, the same floating-point results -- tapernn's kernels have no
fast-math flags -- issue 19, hcold5/hcold6; not the suite's default: its unoptimised kernels
ran the whole suite no faster cold and slower warm, BENCHMARKS.md "Stop 37"). Two things numba does not do by itself there:

- **cacheable**: below -O3 a kernel that calls another njit function (a program's fused-group
  kernels, vecmath's functions, a step loop's passes) keeps a dead load of each callee
  dispatcher's address in its final module, a `numba.dynamic.globals` variable, and numba does
  not cache a module with one: every process would compile it again. Dead-code and dead-global
  elimination of the final module first -- what -O3 does anyway -- leave only the used ones.
- **keyed**: numba's cache index keys an entry by signature, target and bytecode, not by the
  level, so a -O0 process would write -O0 machine code where a -O3 process loads it. The level
  is added to the index key (codegen.magic_tuple) of every numba function of the process, and
  numba_backend.cache_dir() is a directory per level.

Both wrap numba.core.codegen internals (numba 0.68): when they are not as expected nothing is
patched and a debug log says so; then `keyed()` is False, and tapernn's own package-level
functions (numba_update.py, numba_digest.py: `cache=keyed()`) are not disk-cached (slower, never wrong). At -O3
nothing here changes anything."""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict[str, bool] = {}  # "keyed", "dce": installed in this process
CONFIG_FILE = ".numba_config.yaml"  # (numba.core.config._config_fname: read from the cwd)


def opt_level() -> str:
    """numba's optimisation level in this process (numba.core.config.OPT, read from NUMBA_OPT
    when numba is imported): "0", "1", "2", "3" (numba's default) or "max". Before numba is
    imported (or while another thread imports it) read as numba will read it -- a valid
    NUMBA_OPT, no .numba_config.yaml here -- not importing numba for it: a first call's compile
    asks (compile_child.offered: the kernels' cache folder) while the worker is held
    (background.py) and numba's import is the worker's job."""
    numba = sys.modules.get("numba")
    if numba is None or getattr(numba.__spec__, "_initializing", False):
        text = os.environ.get("NUMBA_OPT", "3")
        if text in ("0", "1", "2", "3", "max") and not os.path.isfile(CONFIG_FILE):
            return text
    from numba.core import config

    config.reload_config()  # (as numba's next compile will: NUMBA_OPT set after numba's import)
    if getattr(config.OPT, "is_opt_max", False):
        return "max"
    return str(int(config.OPT))


def below_o3() -> bool:
    return opt_level() in ("0", "1", "2")


def keyed() -> bool:
    """Below -O3: install both wrappers (once per process); True when numba's cache is keyed by
    the level here (always at -O3, where nothing is installed)."""
    if not below_o3():
        return True
    with _lock:
        if "keyed" not in _state:
            _state["keyed"] = _key_by_level(opt_level())
            _state["dce"] = _dead_globals_removed()
        return _state["keyed"]


def _key_by_level(level: str) -> bool:
    try:
        from numba.core import codegen

        cls = codegen.CPUCodegen
        magic = cls.magic_tuple
    except (ImportError, AttributeError) as e:
        log.debug("tapernn: numba's cache is not keyed by -O%s (%s): caching off", level, e)
        return False
    if getattr(magic, "tapernn_level", None) is not None:
        return magic.tapernn_level == level

    def magic_tuple(self):
        return (*magic(self), f"tapernn-opt{level}")

    magic_tuple.tapernn_level = level
    cls.magic_tuple = magic_tuple
    return True


def _dead_globals_removed() -> bool:
    try:
        import llvmlite.binding as ll
        from numba.core import codegen

        library = codegen.CPUCodeLibrary
        scan = library._finalize_dynamic_globals
        ll.create_new_module_pass_manager  # noqa: B018 -- (present: checked here)
        codegen.CPUCodegen._pass_builder  # noqa: B018
    except (ImportError, AttributeError) as e:
        log.debug("tapernn: numba kernels that call others are not cached below -O3 (%s)", e)
        return False
    if getattr(scan, "tapernn", False):
        return True

    def finalize_dynamic_globals(self):
        try:
            builder = self._codegen._pass_builder(opt=0, loop_vectorize=False, slp_vectorize=False)
            passes = ll.create_new_module_pass_manager()
            passes.add_dead_code_elimination_pass()
            passes.add_global_dead_code_eliminate_pass()
            passes.run(self._final_module, builder)
        except AttributeError as e:  # (the module as numba left it: not cached, still right)
            log.debug("tapernn: dead numba.dynamic.globals not removed (%s)", e)
        return scan(self)

    finalize_dynamic_globals.tapernn = True
    library._finalize_dynamic_globals = finalize_dynamic_globals
    return True
