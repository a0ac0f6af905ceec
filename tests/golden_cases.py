"""The golden DOT diagrams: name -> how to draw it. `tools/update_goldens.py` writes them to
tests/golden/<name>.dot; tests/test_export_golden.py compares. Shapes are fixed so ids are stable.
"""

from __future__ import annotations

from pathlib import Path

import tapernn as tn
from tapernn.export.samples import lstm_graph

GOLDEN_DIR = Path(__file__).parent / "golden"


def _forward():
    return lstm_graph(steps=3, batch=2, n_in=3, hidden=4)


def _both():
    return tn.grad(_forward())


def _transducer():
    return lstm_graph(steps=3, batch=2, n_in=3, hidden=4, n_out=2)


CASES = {
    "lstm3_op_forward": lambda: tn.to_dot(_forward(), level="op", view="forward"),
    "lstm3_op_both": lambda: tn.to_dot(_both(), level="op", view="both"),
    "lstm3_module_forward": lambda: tn.to_dot(_transducer(), level="module", view="forward"),
    "lstm3_module_both": lambda: tn.to_dot(tn.grad(_transducer()), level="module", view="both"),
}


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.dot"
