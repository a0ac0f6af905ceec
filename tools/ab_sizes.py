"""A/B of branch hgen (issue 19): "new" (as built: each translated step loop's sizes -- column
offsets and widths, the half's rows, its passes' widths -- read from its `_dims` argument, one
compiled kernel for every B and H) against "old" (the same kernel text with every size written
in as a literal, each pass's `range(_w)` a `range(<width>)`: main's text), tapernn numba
models with the default options and torch nn.LSTM f32 -- one process, interleaved rounds
(tools/ab_loop.py's rounds, rests and table), gradients of old and new compared bit for bit.

Run: PYTHONPATH=$PWD python tools/ab_sizes.py --configs 32,50,256 32,50,512 --reps 15
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab_loop  # (its rounds, rests and table: only the arms' steps are this file's)
from ab_common import training_step

from tapernn.backends import step_loop
from tapernn.backends.size_lift import sizes_written_in

TEXTS: dict = {"old": [], "new": []}  # (each arm's step-loop texts: printed)


def literal(translate, mode):
    """`translate` whose kernel text has its sizes written in (its `_dims` left empty) when
    `mode` is "old"; each text kept in TEXTS[mode]."""

    def wrapped(*args, **kw):
        source, names, checks, dims, rows = translate(*args, **kw)
        if mode == "new":
            TEXTS[mode].append(source)
            return source, names, checks, dims, rows
        text = sizes_written_in(source, dims)
        for r, width in re.findall(r"_pass(\d+)\((\d+), ", text):
            i = text.index(f"def _pass{r}(")
            j = text.find("\n@njit", i)
            text = text[:i] + text[i:j].replace("range(_w)", f"range({width})") + text[j:]
        TEXTS[mode].append(text)
        return text, names, checks, np.zeros(0, np.int64), rows

    return wrapped


def tn_step(B, T, H, dtype, x, g, mode, cell="FastLSTM"):
    step, seq = training_step(x.astype(dtype), g.astype(dtype), H, cell=cell)
    original = step_loop.translate
    step_loop.translate = literal(original, mode)  # (its step loops translated and compiled
    # now: no background)
    os.environ["TAPERNN_NUMBA_BACKGROUND"] = "0"
    try:
        for _ in range(6):
            step()
    finally:
        step_loop.translate = original
        os.environ.pop("TAPERNN_NUMBA_BACKGROUND")
    for text in TEXTS[mode]:
        body = text[text.index("\n@njit(cache=True, nogil=True, error_model") :]
        sizes = len(re.findall(r"\b\d{2,}\b", re.sub(r"_dims\[\d+\]", "", body)))
        print(f"  {mode}: step loop text: {sizes} literal sizes, {text.count('_dims[')} read")
    TEXTS[mode].clear()
    return step, seq


if __name__ == "__main__":
    ab_loop.main(tn_step)
