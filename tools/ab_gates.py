"""A/B of the short gate loops' hidden counts (loop_values.SHORT, BENCHMARKS.md "hgate5") in ONE
process: a cell's numba model built twice, once with SHORT = 0 (no count hidden: the kernels
before) and once with SHORT as shipped, timed in alternating blocks by the thread's CPU time
(time.thread_time_ns); prints each arm's median and best block and checks that both give the
same bits. Whole training steps by default; `--kernels`: the whole-loop kernels alone (the
program kernels off, so each loop's kernel is called from Python with the arguments of a real
step, numba's dispatch included in both arms alike), forward and backward.

Run: PYTHONPATH=$PWD python tools/ab_gates.py [--cell FastLSTM] [--config 1,5,5]
     [--dtype float32] [--blocks 31] [--steps 1000] [--kernels]
"""

import statistics
import time

import numpy as np
from ab_trips import parsed, stepper

from tapernn.backends import loop_values, numba_interleave, numba_loop, numba_program

ARMS = {"old": 0, "new": loop_values.SHORT[0]}


def build(cell: str, short: int, x: np.ndarray, g: np.ndarray):
    """(model, step) of a fresh numba Sequencer(cell) compiled with SHORT = short (and the
    whole-loop kernels' trip count as shipped)."""
    loop_values.SHORT[0] = short
    return stepper(cell, numba_interleave.TRIP[0], x, g)


def capturing() -> list:
    """The (kernel, arguments) of every whole-loop kernel call made from now on (numba's
    dispatcher and copies of the arrays of its first call)."""
    calls: list = []
    real = numba_loop.kernel_runner

    def runner(handle, *args, **kwargs):
        run = real(handle, *args, **kwargs)
        kernel, seen = run.__kwdefaults__["kernel"], []

        def spy(*a):
            if not seen:
                seen.append(True)
                calls.append((kernel, [v.copy() if isinstance(v, np.ndarray) else v for v in a]))
            return kernel(*a)

        run.__kwdefaults__["kernel"] = spy
        return run

    numba_loop.kernel_runner = runner
    return calls


def alternate(runs: dict, blocks: int, steps: int) -> dict:
    """Per arm, its blocks' times (us a call) running runs[arm] `steps` times a block."""
    times: dict = {arm: [] for arm in runs}
    for b in range(blocks):
        for arm in runs if b % 2 == 0 else list(runs)[::-1]:
            run = runs[arm]
            t = time.thread_time_ns()
            for _ in range(steps):
                run()
            times[arm].append((time.thread_time_ns() - t) / steps / 1000)
    return times


def report(title: str, times: dict, same: bool) -> None:
    print(f"{title}, us a call (thread CPU), same bits: {same}")
    base = statistics.median(times["old"])
    for arm, ts in times.items():
        med = statistics.median(ts)
        print(f"  {arm}: median {med:.3f}, best {min(ts):.3f}, ratio {med / base:.3f}")


def main() -> None:
    args, x, g = parsed(__doc__.splitlines()[0], "--kernels")
    name = f"{args.cell} {args.config} {args.dtype} [numba]"
    if not args.kernels:
        arms = {arm: build(args.cell, short, x, g) for arm, short in ARMS.items()}
        outs = {arm: (np.array(m.forward(x)), np.array(step())) for arm, (m, step) in arms.items()}
        same = all(np.array_equal(a, b) for a, b in zip(*outs.values()))
        runs = {arm: step for arm, (_, step) in arms.items()}
        report(f"{name} training step", alternate(runs, args.blocks, args.steps), same)
        return
    numba_program.ENABLED[0] = False
    found = {}
    for arm, short in ARMS.items():
        calls = capturing()
        build(args.cell, short, x, g)
        found[arm] = calls[:2]  # (the forward loop's kernel, then the backward's)
    for k, part in enumerate(("forward", "backward")):
        runs, outs = {}, []
        for arm, calls in found.items():
            kernel, a = calls[k]
            outs.append(kernel(*[v.copy() if isinstance(v, np.ndarray) else v for v in a]))
            runs[arm] = lambda kernel=kernel, a=a: kernel(*a)
        same = np.array_equal(*outs)
        report(f"{name} {part} loop kernel", alternate(runs, args.blocks, args.steps), same)


if __name__ == "__main__":
    main()
