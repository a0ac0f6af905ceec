"""Benchmarks: the hand-written NumPy LSTM reference (`reference`) and the side-by-side harness
(`harness`, run by `tapernn bench` and `python tools/bench.py`)."""

from .harness import add_arguments, main, run

__all__ = ["add_arguments", "main", "run"]
