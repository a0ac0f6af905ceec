"""LSTM training-step benchmark (see tapernn/apps/benchmark/harness.py): tapernn vs the hand-written
NumPy reference, the BLAS matmul rate and optional peers, measured side by side.

Run: python tools/bench.py [--full] [--ablation] [--peers] [--threads 1]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tapernn from this checkout

from tapernn.apps.benchmark import main

if __name__ == "__main__":
    main()
