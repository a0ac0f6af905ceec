"""The child side of compile_child.py (`run(<spec file>)`, in a process compile_child starts)
imports the spec's kernel-cache modules (each after those it names; the kernel's own last) and
compiles its function for each signature under the LLVM options the text names
(numba_interleave.named), numba's cache files written as in the parent. Its last stderr line
says why it failed (exit 1); it exits when its parent is gone. `serve(<parent id>)`: the compile
server's side (compile_child.Server) -- jobs read from stdin, one reply line each on stdout."""

from __future__ import annotations

import base64
import importlib
import os
import pickle
import sys
import threading
import time
from pathlib import Path


def _watch(parent: int) -> None:
    """Exit when the parent is gone (this process re-parented): no orphan compiles on."""

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=run, daemon=True).start()


def main(path: str) -> None:
    """The child: import the spec's modules, compile its function for its signature."""
    with open(path, "rb") as f:
        spec = pickle.load(f)
    _watch(spec["parent"])
    from . import numba_interleave
    from .kernel_cache import import_written
    from .numba_setup import setup

    setup()
    for name, file, text in spec["modules"]:  # (the kernel's own module last)
        module = import_written(Path(file).parent, name, text.encode())
    fn = getattr(module, spec["function"])
    for sig in pickle.loads(spec["sigs"]):
        with numba_interleave.named(text, sig):
            fn.compile(sig)


def run(path: str) -> None:
    """`main`, its failure written as the last stderr line (the parent's `why`), exit 1."""
    try:
        main(path)
    except Exception as e:  # noqa: BLE001 -- any failure: the parent compiles
        from .background import failure

        sys.stderr.write(f"\n{failure(e)}\n")
        sys.exit(1)


def serve(parent: int) -> None:
    """The compile server: "ready" once numba is set up, then per stdin line -- a pickled
    (handle recipe, key, cache folder), compile_child._recipe -- the handle built and its own
    `prepare(key)` run (its compile, numba's cache written), "ok" or "fail <why>" on stdout;
    it exits at stdin's end or its parent's."""
    _watch(parent)
    from .background import failure
    from .numba_backend import cache_dir
    from .numba_setup import setup

    setup()
    out = os.fdopen(os.dup(1), "w")  # (the replies' own: whatever else prints goes to stderr)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            (module, cls, args), key, folder = pickle.loads(base64.b64decode(line))
            if str(cache_dir()) != folder:  # (another kernel cache: the parent would not load it)
                raise RuntimeError(f"kernel cache {cache_dir()}, the parent's {folder}")
            handle = getattr(importlib.import_module(module), cls)(*args)
            handle.prepare(key)
            if handle.error:
                raise RuntimeError(handle.error)
            reply = "ok"
        except Exception as e:  # noqa: BLE001 -- any failure: the parent compiles
            reply = f"fail {failure(e)}"
        out.write(reply + "\n")
        out.flush()
