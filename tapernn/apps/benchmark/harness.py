"""LSTM training-step benchmark: tapernn's Sequencer cells against the hand-written NumPy floor
(tapernn/apps/benchmark/reference.py), the BLAS matmul rate for the same GEMMs, and optionally PyTorch.
Contenders run interleaved in one process and are reported as medians and ratios, never alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...blas import blas_threads
from .peers import make_gemm_step, make_torch_contenders
from .reference import ReferenceLSTM, min_saved_bytes, theoretical_min_bptt_bytes
from .roofline import roofline_lines
from .timing import (  # noqa: F401 (PEER_BLOCKS: read by tests through harness)
    BLOCK_S,
    NOT_AVAILABLE,
    PEER_BLOCKS,
    Contender,
    lstm_flops,
    tapernn_factories,
    time_blocks,
    time_interleaved,
)

CONFIGS = [(1, 5, 5), (32, 50, 128), (32, 50, 256), (32, 50, 512), (64, 100, 1024)]
QUICK_CONFIGS = CONFIGS[:3]
TINY_FLOPS = 1e7  # configs under this many FLOPs a step are also timed in blocks (--blocks auto)


# --- environment -------------------------------------------------------------------------------


def describe_blas() -> list[str]:
    lines = []
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            lines.append(
                f"BLAS: {pool.get('internal_api')} {pool.get('version')} "
                f"arch={pool.get('architecture')} threads={pool.get('num_threads')} "
                f"({Path(pool.get('filepath', '')).name})"
            )
    except ImportError:
        lines.append(
            "BLAS: threadpoolctl not installed (pip install tapernn[bench]); "
            "numpy.show_config() has the details"
        )
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if os.environ.get(var):
            lines.append(
                f"WARNING: {var}={os.environ[var]} is set; BLAS kernels may not match "
                "this CPU and every ratio below is suspect"
            )
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    lines.append(f"numpy {np.__version__}, {cpus} CPUs, load average {load:.2f}")
    if load > 0.5 * cpus:
        lines.append(
            "WARNING: busy machine. A multi-threaded GEMM waits for its slowest thread, "
            "so other processes inflate times 10-100x; try --threads 1"
        )
    return lines


# --- contenders --------------------------------------------------------------------------------


_sequencers: dict[tuple, object] = {}
_UNROLL = {"auto": None, "rolled": False, "unrolled": True}
unroll: list = [None]  # the Sequencers' `unroll` (--unroll)
need_dx: list = [True]  # every contender computes the input's gradient (not: --no-grad-input)


def tapernn_stepper(
    module_factory: Callable,
    x: np.ndarray,
    grad_h: np.ndarray,
    backend: str | None = None,
    layout: str | None = None,
) -> Callable[[], None]:
    """One tapernn training step of `Sequencer(module_factory(D, H))`, as a user's loop
    writes it. The Sequencer is built once per (factory, shapes, dtype, backend, layout) and
    cached (later tables find it); its PlanOptions carry the backend and layout, so its
    compiles (the first, untimed call) use them without `set_backend` around every call."""
    import tapernn as tn
    from tapernn import nn

    T, B, D = x.shape
    H = grad_h.shape[2]
    key = (module_factory, B, T, D, H, x.dtype, backend, unroll[0], layout)
    seq = _sequencers.get(key)
    if seq is None:
        seq = nn.Sequencer(module_factory(D, H), unroll=unroll[0])
        if backend or layout:
            seq.set_plan_options(tn.PlanOptions(backend=backend or "", layout=layout or "auto"))
        seq = _sequencers[key] = seq.astype(x.dtype)
    forward, zero, backward, dx = seq.forward, seq.zero_grad_parameters, seq.backward, need_dx[0]

    def step() -> None:
        forward(x)
        zero()
        backward(x, grad_h, need_grad_input=dx)

    return step


def make_tapernn_contenders(
    B, T, D, H, dtype, x, grad_h, cells=None, backends=(None,), layouts=(None,)
) -> list[Contender]:
    """One contender per cell (all, or those named in `cells`), backend (None: the
    current one; a name is shown in the label) and layout (None: the default, "auto")."""
    factories = tapernn_factories()
    if isinstance(factories, str):
        return [
            Contender(f"tn {name}", None, note=NOT_AVAILABLE)
            for name in ("FastLSTM", "LSTM(peephole=False)", "LSTM", "GRU")
        ]
    contenders = []
    for label, (factory, gates) in factories.items():
        if cells and label not in cells:
            continue
        if factory is None:
            contenders.append(Contender(f"tn {label}", None, note=NOT_AVAILABLE))
            continue
        for backend in backends:
            for layout in layouts:
                step = tapernn_stepper(factory, x, grad_h, backend, layout)
                name = f"tn {label}" + (f" [{backend}]" if backend else "")
                name += f" [{layout}]" if layout else ""
                flops = lstm_flops(B, T, D, H, gates, dx=need_dx[0])
                # numba (or "auto", which moves there) may own its calls' threads: a pool apart
                pool = "" if backend == "numpy" else f"tapernn {backend or 'default'}"
                contenders.append(Contender(name, step, flops, pool=pool))
    return contenders


def build_contenders(B, T, D, H, dtype, args) -> tuple[list[Contender], ReferenceLSTM]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    grad_h = rng.standard_normal((T, B, H)).astype(dtype)
    dx = need_dx[0]
    flops = lstm_flops(B, T, D, H, dx=dx)
    reference = ReferenceLSTM(D, H, dtype)
    contenders = [
        Contender(
            f"reference ({reference.orientation}-major)",
            lambda: reference.step(x, grad_h, need_grad_input=dx),
            flops,
        ),
        Contender(
            "numpy matmul, same GEMMs",
            make_gemm_step(B, T, D, H, dtype, reference.orientation, need_dx=dx),
            flops,
        ),
    ]
    if args.orientation:
        other = "feature" if reference.orientation == "batch" else "batch"
        alt = ReferenceLSTM(D, H, dtype, orientation=other)
        step = lambda: alt.step(x, grad_h, need_grad_input=dx)
        contenders.append(Contender(f"reference ({other}-major)", step, flops))
    contenders += make_tapernn_contenders(
        B,
        T,
        D,
        H,
        dtype,
        x,
        grad_h,
        getattr(args, "cells", None),
        getattr(args, "backends", None) or (None,),
        ("batch", "feature", "auto") if args.orientation else (None,),
    )
    if args.peers:
        peers = make_torch_contenders(
            B, T, D, H, dtype, x, grad_h, args.threads, dx, one_thread=tiny(B, T, D, H, args)
        )
        contenders += peers or [Contender("torch nn.LSTM", None, note="torch not importable")]
    return contenders, reference


def tiny(B: int, T: int, D: int, H: int, args) -> bool:
    """Whether this config is also timed in blocks (--blocks; auto: under TINY_FLOPS)."""
    mode = getattr(args, "blocks", "auto")
    return mode == "all" or (mode == "auto" and lstm_flops(B, T, D, H) < TINY_FLOPS)


# --- report ------------------------------------------------------------------------------------


def format_rows(contenders: list[Contender], kind: str = "times") -> list[str]:
    """One row per contender from its `kind` timings (times: single interleaved calls;
    block_times: per-step means of blocks, then their CPU time and its ratio to the least CPU
    of a torch row); "vs torch" is over the fastest torch row's median."""
    median = lambda c, k=kind: statistics.median(getattr(c, k))
    reference, matmul = contenders[0], contenders[1]
    ref_s = median(reference) if getattr(reference, kind) else float("nan")
    mm_rate = matmul.flops / median(matmul) if getattr(matmul, kind) else float("nan")
    peer_s = min((median(c) for c in contenders if c.peer and getattr(c, kind)), default=None)
    cpus = [median(c, "block_cpu") for c in contenders if c.peer and c.block_cpu]
    peer_cpu = min(cpus) if cpus and kind == "block_times" else None
    rows = []
    for c in contenders:
        if not getattr(c, kind):
            rows.append(f"  {c.name:<34} {c.note}")
            continue
        med = median(c)
        rate = c.flops / med
        rows.append(
            f"  {c.name:<34} {med * 1e3:>10.3f} {rate / 1e9:>9.2f} {med / ref_s:>8.2f}x "
            f"{rate / mm_rate:>8.1%} {len(getattr(c, kind)):>5}"
            + (f" {med / peer_s:>8.3f}x" if peer_s else "")
            + (f" {median(c, 'block_cpu') * 1e3:>9.3f}" if kind == "block_times" else "")
            + (f" {median(c, 'block_cpu') / peer_cpu:>8.3f}x" if peer_cpu else "")
        )
    return rows


def report_config(B, T, D, H, dtype, args) -> None:
    contenders, reference = build_contenders(B, T, D, H, dtype, args)
    desc = f"B={B} T={T} H={H} {np.dtype(dtype).name}"
    blocks = tiny(B, T, D, H, args)  # (tiny: single calls swing; at least 21 of them)
    time_interleaved(contenders, args.budget, 21 if blocks else 7, progress=True, desc=desc)
    if blocks:  # (after the single calls: their warm-up compiled every contender)
        time_blocks(contenders, args.budget)
    print(
        f"\n(B={B}, T={T}, D=H={H}) {np.dtype(dtype).name}:  "
        f"({lstm_flops(B, T, D, H, dx=need_dx[0]) / 1e9:.3f} GFLOP per LSTM step"
        + ("" if need_dx[0] else ", no input gradient anywhere")
        + ")"
    )
    header = (
        f"  {'contender':<34} {'median ms':>10} {'GFLOP/s':>9} {'vs ref':>9} {'of matmul':>8} "
        f"{'reps':>5}" + (f" {'vs torch':>9}" if args.peers else "")
    )
    if blocks:
        print("  single calls, interleaved (each after other contenders' calls: cold caches)")
    print("\n".join([header, *format_rows(contenders)]))
    if not blocks:  # (tiny steps are call overhead: the GEMM peak says nothing there)
        print("\n".join(roofline_lines(contenders, dtype)))
    if blocks:
        print(
            f"  blocks of steps back to back, as a training loop runs them (~{BLOCK_S * 1e3:.0f}"
            " ms each, after one untimed call; contenders alternate block by block, a rest "
            "between libraries; ms per step, reps = blocks; cpu ms: the process's CPU time per "
            "step, which a busy machine's preemption does not inflate)"
        )
        header += f" {'cpu ms':>9}" + (f" {'cpu/torch':>9}" if args.peers else "")
        print("\n".join([header, *format_rows(contenders, "block_times")]))
    minimum = theoretical_min_bptt_bytes(B, T, D, H, dtype)
    workspace = reference.workspace_bytes()
    unit, scale = ("MiB", 2**20) if workspace >= 2**20 else ("KiB", 2**10)
    print(
        f"  memory: reference workspace {workspace / scale:.2f} {unit}, theoretical BPTT "
        f"minimum {minimum / scale:.2f} {unit} (max(T*B*5H, P+T*B*D)*itemsize, P = parameters; "
        "per cell below)"
    )
    backends = getattr(args, "backends", None) or (None,)
    for row in memory_rows(B, T, D, H, dtype, workspace, args.cells, backends):
        print(row)
    from .memory import measured_rows

    for row in measured_rows(B, T, D, H, dtype, args.peers, args.cells, backends):
        print(row)


def training_pairs_of(factory: Callable, B: int, T: int, D: int, H: int, dtype):
    """(backend, Sequencer, compiled forward/backward pair) of each cached benchmark Sequencer of
    this cell and shape, one per backend it was timed under (None: the current backend)."""
    found = []
    for key, seq in _sequencers.items():
        if key[:6] == (factory, B, T, D, H, np.dtype(dtype)):
            last = getattr(getattr(seq, "_runtime", None), "last", None)
            pair = getattr(last, "training_pair", None)
            if pair is not None:
                found.append((key[6], seq, pair))
    return found


def _layout_label(seq) -> str:
    layout = next((key[8] for key, found in _sequencers.items() if found is seq), None)
    return f" [{layout}]" if layout else ""


def memory_rows(B, T, D, H, dtype, workspace: int, cells=None, backends=(None,)) -> list[str]:
    """Per tapernn contender: bytes kept for backward, buffers each program allocates, what is
    resident across a training step and the most bytes live at once, against the reference and
    the theoretical minimum (with the contender's own parameter count); saved/5H: what the
    forward keeps over the T*B*5H an LSTM must keep. Only the cells and backends timed now."""
    factories = tapernn_factories()
    if isinstance(factories, str):
        return []
    unit, scale = ("MiB", 2**20) if workspace >= 2**20 else ("KiB", 2**10)
    mib = lambda b: f"{b / scale:.2f}"
    header = (
        f"  {'tapernn ' + unit:<34} {'saved':>7} {'fwd buf':>8} {'bwd buf':>8} "
        f"{'resident':>9} {'peak':>7} {'res/ref':>8} {'peak/min':>9} {'saved/5H':>9}"
    )
    rows = [header]
    timed = [
        (label + (f" [{backend}]" if backend else "") + _layout_label(seq), seq, pair)
        for label, (factory, _) in factories.items()
        if factory and label in (cells or [label])
        for backend, seq, pair in training_pairs_of(factory, B, T, D, H, dtype)
        if backend in backends
    ]
    for label, seq, pair in timed:
        n_params = sum(p.data.size for p in seq.parameters())
        minimum = theoretical_min_bptt_bytes(B, T, D, H, dtype, n_params)
        fwd, bwd = pair.forward.report, pair.backward.report
        resident = getattr(pair, "resident_bytes", fwd.planned_bytes + bwd.planned_bytes)
        peak = max(fwd.peak_bytes, bwd.peak_bytes)
        rows.append(
            f"  {'tn ' + label:<34} {mib(pair.saved_bytes):>7} {mib(fwd.planned_bytes):>8} "
            f"{mib(bwd.planned_bytes):>8} {mib(resident):>9} {mib(peak):>7} "
            f"{resident / workspace:>7.2f}x {peak / minimum:>8.2f}x "
            f"{pair.saved_bytes / min_saved_bytes(B, T, H, dtype):>8.2f}x"
        )
    return rows


# --- command line ------------------------------------------------------------------------------


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--full", action="store_true", help="all configs (default: first three)")
    ap.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        action="append",
        help="repeatable; default float32 (quick) or both (--full)",
    )
    configs = " ".join(",".join(map(str, c)) for c in CONFIGS)
    ap.add_argument(
        "--configs",
        nargs="+",
        metavar="B,T,H",
        type=config_triple,
        help=f"override configs, e.g. 32,50,512 (default: the first three of "
        f"{configs}, all with --full)",
    )
    ap.add_argument("--peers", action="store_true", help="add torch.nn.LSTM if importable")
    ap.add_argument("--ablation", action="store_true", help="time tapernn with each pass removed")
    ap.add_argument(
        "--ablation-cell",
        choices=["FastLSTM", "LSTM(peephole=False)", "LSTM", "GRU"],
        default="FastLSTM",
        help="the Sequencer cell the ablation compiles",
    )
    ap.add_argument(
        "--compile-time",
        action="store_true",
        help="time compiling Sequencer(LSTM) and (FastLSTM) at B=32, H=256, T=50/100",
    )
    ap.add_argument(
        "--orientation",
        action="store_true",
        help="also time the reference in its other recurrent-GEMM orientation, and tapernn "
        "with each PlanOptions.layout (batch, feature, auto)",
    )
    ap.add_argument("--threads", type=positive(int), help="limit BLAS threads (threadpoolctl)")
    ap.add_argument(
        "--blocks",
        choices=["auto", "all", "none"],
        default="auto",
        help="also time blocks of steps back to back, as a training loop runs them (auto: "
        "configs under 10 MFLOP a step, e.g. (1, 5, 5)); there torch is also timed at 1 thread",
    )
    ap.add_argument(
        "--backends",
        nargs="+",
        choices=["numpy", "numba"],
        help="time tapernn under each of these backends (default: the current one)",
    )
    ap.add_argument(
        "--cells",
        nargs="+",
        choices=["FastLSTM", "LSTM(peephole=False)", "LSTM", "GRU"],
        help="tapernn cells to time (default: all)",
    )
    ap.add_argument(
        "--first-call",
        action="store_true",
        help="first three training steps of a (32, 50, 256) FastLSTM, and 100-step runs at "
        "(32, 50, 256) and (1, 5, 5), in fresh processes: NumPy, numba compiling in the "
        "background / at the first call, with an empty and with a warm kernel cache",
    )
    ap.add_argument(
        "--unroll",
        choices=sorted(_UNROLL),
        default="auto",
        help="the tapernn Sequencers' loops: rolled (one scan), unrolled, or auto (unroll=None, "
        "the Sequencer's own choice: rolled at every length)",
    )
    ap.add_argument(
        "--no-grad-input",
        action="store_true",
        help="no timed contender computes the input's gradient (tapernn need_grad_input=False, "
        "torch input without requires_grad, the reference and the GEMMs without the dX GEMM; "
        "the memory tables keep it)",
    )
    ap.add_argument(
        "--budget",
        type=positive(float),
        help="seconds of timed runs per config (default 3, 10 with --full)",
    )


def config_triple(text: str) -> tuple[int, int, int]:
    """argparse type of `--configs` items: "B,T,H", three positive integers."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected B,T,H (three positive integers), got {text!r}")
    return values


def positive(kind: type) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.configs:
        args.config_list = list(args.configs)
    else:
        args.config_list = CONFIGS if args.full else QUICK_CONFIGS
    names = args.dtype or (["float32", "float64"] if args.full else ["float32"])
    args.dtypes = [np.dtype(n) for n in names]
    args.budget = args.budget or (10.0 if args.full else 3.0)
    unroll[0] = _UNROLL[getattr(args, "unroll", "auto")]
    need_dx[0] = not getattr(args, "no_grad_input", False)
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    add_arguments(ap)
    return finish_args(ap.parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """`tapernn bench`: print the tables (arguments from add_arguments)."""
    if not hasattr(args, "config_list"):
        finish_args(args)
    for line in describe_blas():
        print(line)
    print(
        "Training step = forward + backward + parameter gradients, zero initial state; "
        "'vs ref' = time / reference time; 'of matmul' = GFLOP/s / GEMM-only GFLOP/s."
    )
    if args.threads:
        print(f"BLAS threads limited to {args.threads}")
    with blas_threads(args.threads):
        for dtype in args.dtypes:
            for B, T, H in args.config_list:
                report_config(B, T, H, H, dtype, args)
        if args.ablation:
            from .ablation import run_ablation

            run_ablation(
                args.config_list,
                args.dtypes,
                args.budget,
                getattr(args, "ablation_cell", "FastLSTM"),
            )
        if getattr(args, "compile_time", False):
            from .compile_time import run_compile_times

            run_compile_times(args.dtypes)
    if getattr(args, "first_call", False):
        from .first_call import run_first_call

        run_first_call()
    return 0


if __name__ == "__main__":
    main()
