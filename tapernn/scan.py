"""The `scan` op (issue 16: compile the step once): registration of the loop node -- its rules
and reference forward (scan_ir), its lowering (scan_run) and VJP (scan_grad) -- and the public
names `tn.scan`, `tn.inline`, `tn.unroll_scans`, `ScanResult`."""

from __future__ import annotations

from . import (
    executor,
    scan_layout,  # noqa: F401 (registers the layout rule's step timer)
)
from .ops.registry import register
from .scan_grad import scan_vjp
from .scan_ir import (
    ScanResult,
    inline,
    scan,
    scan_dtype,
    scan_forward,
    scan_rows,
    scan_shape,
    unroll_scans,
)
from .scan_run import lower_scan

SCAN = register(
    "scan",
    forward=scan_forward,
    shape=scan_shape,
    dtype=scan_dtype,
    vjp=scan_vjp,
    lower=lower_scan,
    rows=scan_rows,
)
executor.set_unroller(unroll_scans)

__all__ = ["SCAN", "ScanResult", "inline", "scan", "unroll_scans"]
