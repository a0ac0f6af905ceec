"""`tn.set_blas_threads("auto")` measures: a program with big enough GEMMs alternates one
thread and the pool's count for its first calls, runs with the faster, checks the other now and
then, and follows a change of load; results do not depend on the count."""

from __future__ import annotations

import numpy as np
import pytest
from test_blas import (  # noqa: F401
    choices,
    n_pools,
    needs_pool,
    same_or_close,
    spy,
    threads_now,
    two_threads,
)

import tapernn as tn
from tapernn import blas, blas_tuning, nn
from tapernn.blas_bits import blas_bits
from tapernn.blas_tuning import (
    EXPLORE_CALLS,
    RECHECK_CALLS,
    RECHECK_CLOSE,
    RECHECK_FIRST,
    RECHECK_MAX,
    ThreadChoice,
    _Arm,
)


def drive(arm: _Arm, cost: dict, calls: int) -> list[int]:
    """Run `calls` calls on `arm` where a call with n threads takes cost[n] seconds."""
    seen = []
    for _ in range(calls):
        n = arm.next_count()
        seen.append(n)
        arm.record(n, cost[n])
    return seen


def test_explores_both_counts_then_keeps_the_faster():
    arm = _Arm(guess=1, pool=2)
    seen = drive(arm, {1: 0.06, 2: 0.04}, 1 + 2 * EXPLORE_CALLS + 5)
    assert seen[0] == 1  # the guess, untimed (first-touch costs)
    explored = seen[1 : 1 + 2 * EXPLORE_CALLS]
    assert sorted(explored) == [1] * EXPLORE_CALLS + [2] * EXPLORE_CALLS
    assert seen[1 + 2 * EXPLORE_CALLS :] == [2] * 5 and arm.current == 2


def test_one_thread_unless_the_pool_is_faster_by_the_margin():
    arm = _Arm(guess=2, pool=2)
    drive(arm, {1: 0.050, 2: 0.048}, 1 + 2 * EXPLORE_CALLS)  # 4 % faster: not worth a core
    assert arm.current == 1
    arm = _Arm(guess=1, pool=4)
    drive(arm, {1: 0.050, 4: 0.040}, 1 + 2 * EXPLORE_CALLS)
    assert arm.current == 4


def test_periodic_checks_back_off_and_follow_a_change_of_load():
    arm = _Arm(guess=1, pool=2)
    quiet, busy = {1: 0.05, 2: 0.04}, {1: 0.05, 2: 0.5}  # one thread 1.25x slower when quiet
    drive(arm, quiet, 1 + 2 * EXPLORE_CALLS)
    first = int(1.25 * RECHECK_FIRST)  # a check costs 1.25 calls: at least 1.25 x 32 apart
    assert arm.current == 2 and arm.period == first
    seen = drive(arm, quiet, 4 * first)
    checks = [i for i, n in enumerate(seen) if n == 1]
    # one check per period, RECHECK_CALLS calls of the other count each
    assert len(checks) >= 4 and checks[:2] == [first, first + 1]
    assert checks[2] - checks[1] == 2 * first + 1  # the period doubled: the choice held
    # the other core gets busy: two threads now wait for it; after two slow calls the medians
    # favour one thread, which is tried at once and kept
    seen = drive(arm, busy, 4)
    assert seen == [2, 2, 1, 1] and arm.current == 1 and arm.switches == 2  # 1 -> 2 -> 1
    assert arm.period == RECHECK_FIRST  # (one of two threads' last three calls was quiet)
    drive(arm, busy, RECHECK_FIRST + 1)  # the next check: two threads 10x slower again
    # ... so checking them costs 10 calls, and the checks come 320 calls apart
    assert arm.current == 1 and arm.period == 10 * RECHECK_FIRST
    # a long busy run: the checks back off up to RECHECK_MAX calls
    drive(arm, busy, 10 * RECHECK_MAX)
    assert arm.current == 1 and arm.period == RECHECK_MAX


def test_a_much_slower_count_ends_the_first_round_at_once():
    arm = _Arm(guess=1, pool=2)
    seen = drive(arm, {1: 0.05, 2: 1.0}, 4 + 3)  # a busy machine: two threads 20x slower
    assert seen == [1, 2, 1, 2, 1, 1, 1]  # two calls with two threads, not EXPLORE_CALLS
    assert arm.current == 1 and arm.period == 20 * RECHECK_FIRST  # a check costs 20 calls


def test_a_tie_within_the_margin_does_not_flip_flop():
    arm = _Arm(guess=1, pool=2)
    seen = drive(arm, {1: 0.050, 2: 0.048}, 1 + 2 * EXPLORE_CALLS + 200)
    assert arm.current == 1 and arm.switches == 0
    # only the spaced checks (RECHECK_CALLS calls each)
    assert seen[1 + 2 * EXPLORE_CALLS :].count(2) <= 3 * RECHECK_CALLS


def test_small_programs_are_not_timed():
    assert not ThreadChoice(blas_tuning.TUNE_MIN_GEMM_FLOPS / 2, 1).tunable
    assert ThreadChoice(blas_tuning.TUNE_MIN_GEMM_FLOPS, 1).tunable
    small = tn.compile(tn.trace(lambda a, b: a @ b, np.ones((8, 8)), np.ones((8, 8))))
    assert not small.threads.tunable and "too small" in small.blas_threads()


def gemm_program(n: int):
    return tn.compile(tn.trace(lambda a, b: tn.tanh(a @ b), np.ones((n, n)), np.ones((n, n))))


@needs_pool
def test_a_big_gemm_program_alternates_then_settles(two_threads, monkeypatch):  # noqa: F811
    prog = gemm_program(96)  # 96^3 > 64^3: OpenBLAS would thread it
    assert prog.threads.tunable
    ticks = [0.0]

    def clock():  # a call costs 2 units with one thread, 1 with two (read inside the call)
        ticks[0] += 1.0 if threads_now()[0] == 2 else 2.0
        return ticks[0]

    monkeypatch.setattr(blas_tuning, "_clock", clock)
    seen = spy(prog)
    a = np.random.default_rng(0).standard_normal((96, 96))
    outs = [prog(a, a) for _ in range(1 + 2 * EXPLORE_CALLS + 3)]
    counts = [s[0] for s in seen]
    assert sorted(counts[1 : 1 + 2 * EXPLORE_CALLS]) == [1] * EXPLORE_CALLS + [2] * EXPLORE_CALLS
    assert counts[1 + 2 * EXPLORE_CALLS :] == [2, 2, 2]  # settled on the faster
    assert threads_now() == [2] * n_pools()  # the pool is restored after every call
    for out in outs[1:]:
        assert np.array_equal(out, outs[0])  # bit for bit, whatever the count
    assert "calls" in prog.blas_threads()
    # each argument signature is timed on its own
    b = np.random.default_rng(1).standard_normal((96, 96)).astype(np.float64)
    prog(b[None][0], b)
    assert len(prog.threads._arms) == 1  # same shapes: the same signature


@needs_pool
def test_fixed_counts_env_vars_and_nested_calls_are_not_timed(two_threads, monkeypatch):  # noqa: F811
    prog = gemm_program(96)
    a = np.ones((96, 96))
    tn.set_blas_threads(1)
    prog(a, a)
    tn.set_blas_threads("auto")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    prog(a, a)
    monkeypatch.delenv("OMP_NUM_THREADS")
    with blas.limiter.limit(1):  # as inside another program's call
        prog(a, a)
    assert prog.threads._arms == {}


@needs_pool
def test_training_steps_are_bit_identical_with_one_or_two_threads(two_threads):  # noqa: F811
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16, 96)).astype(np.float32)
    g = rng.standard_normal((6, 16, 96)).astype(np.float32)
    results, chosen = [], []
    for n in (1, 2):
        tn.set_blas_threads(n)
        tn.manual_seed(0)
        seq = nn.Sequencer(nn.FastLSTM(96, 96)).float()
        # one layout for both: the "auto" layout rule times GEMMs per thread count, and a
        # feature-major program sums in another order (that choice is made at compile time)
        seq.set_plan_options(tn.PlanOptions(layout="batch"))
        y = seq.forward(x)
        seq.zero_grad_parameters()
        gx = seq.backward(x, g)
        results.append([y, gx] + [p.grad.copy() for p in seq.parameters()])
        chosen.append(choices(seq.compile_report()))
    tn.set_blas_threads("auto")
    assert chosen[0] == chosen[1]
    # bit for bit where the BLAS is (tapernn.blas_bits: AVX-512 OpenBLAS), else within rounding
    same_or_close(*results, blas_bits(np.float32).threads, 1e-4)


@pytest.mark.parametrize("bad", [0, "fast"])
def test_bad_policies_still_refused(bad):
    with pytest.raises(tn.TapernnError, match="positive int, 'auto' or None"):
        tn.set_blas_threads(bad)


def test_one_slow_call_does_not_end_the_first_round():
    # numba's switch call (call 2 by default) waits for its kernels' compile: one very slow call
    arm = _Arm(guess=1, pool=2)
    costs = iter([0.1, 5.0] + [0.05, 0.03] * 10)  # call 0 untimed; call 1 (two threads) waits
    seen = []
    for _ in range(1 + 2 * EXPLORE_CALLS + 2):
        n = arm.next_count()
        seen.append(n)
        arm.record(n, next(costs))
    assert arm.current == 2  # the medians of three see through the one slow call
    assert seen[1 : 1 + 2 * EXPLORE_CALLS].count(2) == EXPLORE_CALLS


def drive_cpu(arm: _Arm, cost: dict, calls: int) -> list[int]:
    """`drive`, where a call with n threads takes cost[n] = (seconds, the caller's CPU)."""
    seen = []
    for _ in range(calls):
        n = arm.next_count()
        seen.append(n)
        arm.record(n, *cost[n])
    return seen


def test_one_call_that_spun_the_callers_cpu_ends_the_first_round():
    # a busy machine: the caller spins on the pool's descheduled thread, 1 s of its own CPU in
    # a 3 s call, against 0.1 s calls with one thread -- no wait or queueing explains that CPU
    arm = _Arm(guess=1, pool=2)
    seen = drive_cpu(arm, {1: (0.1, 0.09), 2: (3.0, 1.0)}, 6)
    assert seen == [1, 2, 1, 1, 1, 1]  # one call with two threads, not two
    assert arm.current == 1 and "first round" in arm.why
    # the other way round: one thread's call alone burnt 2.5x a pool call's wall
    arm = _Arm(guess=1, pool=2)
    drive_cpu(arm, {1: (0.25, 0.25), 2: (0.1, 0.1)}, 3)
    assert arm.explore == 0 and arm.current == 2


def test_a_slow_call_that_waited_ends_nothing():
    # a slow call whose caller's CPU was small (it waited: a kernel's compile, a core) decides
    # nothing by itself
    arm = _Arm(guess=1, pool=2)
    seen = drive_cpu(arm, {1: (0.1, 0.09), 2: (3.0, 0.05)}, 4)
    assert seen == [1, 2, 1, 2] and arm.explore == 0  # the second slow call decided (EARLY)
    assert arm.current == 1


def test_a_slowdown_of_the_current_count_is_checked_at_once():
    arm = _Arm(guess=1, pool=2)
    drive(arm, {1: 0.06, 2: 0.04}, 1 + 2 * EXPLORE_CALLS + 2 * RECHECK_FIRST + 2)
    assert arm.current == 2 and arm.period > RECHECK_FIRST and arm.countdown > 5
    # the other core gets busy: two calls slower than one thread was, then the check
    seen = drive(arm, {1: 0.06, 2: 0.5}, 4)
    assert seen == [2, 2, 1, 1] and arm.current == 1


def test_programs_with_measurements_deep_copy_and_pickle():
    import copy
    import pickle

    prog = gemm_program(96)
    a = np.ones((96, 96))
    for _ in range(3):
        prog(a, a)
    choice = copy.deepcopy(prog.threads)
    assert choice.describe() == prog.threads.describe()
    assert pickle.loads(pickle.dumps(prog.threads)).describe() == prog.threads.describe()
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(96, 96))
    seq.forward(np.ones((3, 16, 96)))
    copy.deepcopy(seq).forward(np.ones((3, 16, 96)))  # a model's copy copies its programs


@needs_pool
def test_matrix_vector_products_are_not_timed_so_calls_agree_bit_for_bit(two_threads):  # noqa: F811
    # OpenBLAS splits a GEMV's inner sums between threads: float32 (1, 1000) @ (1000, 1000)
    # differs in the last bits with 1 and 2 threads; "auto" alternated them on one program's
    # calls, so the same inputs gave different results from call to call (a batch of one)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1000, 1000)).astype(np.float32)
    v = rng.standard_normal((1, 1000)).astype(np.float32)
    prog = tn.compile(tn.trace(lambda a, b: a @ b, v, w))
    outs = [prog(v, w) for _ in range(1 + 2 * EXPLORE_CALLS)]
    assert all(np.array_equal(out, outs[0]) for out in outs[1:])
    assert not prog.threads.tunable and "matrix-vector" in prog.blas_threads()
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(256, 256)).float()  # one sequence: GEMVs in the loop
    seq.forward(np.ones((4, 1, 256), np.float32))
    assert not seq.compiled.threads.tunable


def drive_seq(arm: _Arm, costs) -> list[int]:
    """Calls on `arm` where the k-th call with n threads takes costs(k, n) seconds."""
    seen = []
    for k in range(10**6):
        n = arm.next_count()
        t = costs(k, n)
        if t is None:
            return seen
        seen.append(n)
        arm.record(n, t)
    return seen


def test_a_close_first_round_takes_the_shape_rule_and_is_checked_again_soon():
    """The first round's two readings disagree (two threads' median 0.80x one thread's, but
    their best call 1.00x): a close call -- the shape rule's count (the guess), and a check
    RECHECK_CLOSE calls later; there, two threads clearly faster (0.6x) win."""
    quiet = {1: 0.05, 2: 0.03}
    rounds = [0.1, 0.04, 0.05, 0.04, 0.05, 0.045, 0.04]  # (untimed), then pool, one alternating
    n_first = 1 + 2 * EXPLORE_CALLS
    for guess in (1, 2):
        arm = _Arm(guess=guess, pool=2)
        drive_seq(arm, lambda k, n: rounds[k] if k < n_first else None)
        assert arm.current == guess and "close call" in arm.why, arm.why
        assert arm.countdown == RECHECK_CLOSE
    arm = _Arm(guess=1, pool=2)
    drive_seq(arm, lambda k, n: rounds[k] if k < n_first else None)
    seen = drive_seq(arm, lambda k, n: quiet[n] if k < RECHECK_CLOSE + RECHECK_CALLS + 3 else None)
    at = seen.index(2)  # (the medians already favour two threads: the check may come sooner)
    assert 0 < at <= RECHECK_CLOSE and seen[at : at + RECHECK_CALLS] == [2] * RECHECK_CALLS
    assert arm.current == 2 and seen[-3:] == [2, 2, 2] and arm.switches == 1


def test_a_clear_first_round_is_not_a_close_call():
    arm = _Arm(guess=1, pool=2)
    drive(arm, {1: 0.05, 2: 0.03}, 1 + 2 * EXPLORE_CALLS)
    assert arm.current == 2 and "close" not in arm.why and arm.countdown > RECHECK_CLOSE
    arm = _Arm(guess=2, pool=2)
    drive(arm, {1: 0.05, 2: 0.06}, 1 + 2 * EXPLORE_CALLS)
    assert arm.current == 1 and "close" not in arm.why


def test_a_check_reads_fresh_times_of_the_other_count_not_the_first_rounds():
    """Two threads lost the first round to a burst of load (3x slower); at the first periodic
    check the machine is quiet and two threads take 0.6x: the check's own two calls decide
    (the stale, loaded times are dropped), so one check switches. (The old rule took the
    median of the last three calls of each count: two stale calls out-voted the fresh one.)"""
    arm = _Arm(guess=1, pool=2)
    drive(arm, {1: 0.05, 2: 0.15}, 1 + 2 * EXPLORE_CALLS)
    assert arm.current == 1
    period = arm.countdown
    seen = drive(arm, {1: 0.05, 2: 0.03}, period + RECHECK_CALLS + 5)
    assert seen[period : period + RECHECK_CALLS] == [2] * RECHECK_CALLS
    assert arm.current == 2 and seen[-5:] == [2] * 5


def test_a_check_whose_readings_disagree_keeps_the_current_count():
    arm = _Arm(guess=1, pool=2)
    drive(arm, {1: 0.05, 2: 0.15}, 1 + 2 * EXPLORE_CALLS)
    period = arm.countdown
    check = iter([0.03, 0.08])  # one fast call, one slow: best 0.6x, median 1.1x
    seen = drive_seq(
        arm, lambda k, n: (next(check) if n == 2 else 0.05) if k < period + 4 else None
    )
    assert seen[period : period + 2] == [2, 2] and arm.current == 1
    assert "close call" in arm.why and "kept" in arm.why


def test_the_thread_choice_says_why_in_its_description():
    choice = ThreadChoice(blas_tuning.TUNE_MIN_GEMM_FLOPS, 1)
    arm = choice.arm((np.ones((4, 4)),), 2)
    drive(arm, {1: 0.05, 2: 0.03}, 1 + 2 * EXPLORE_CALLS)
    text = choice.describe()
    assert "2 threads" in text and "first round: pool/one medians 0.60x" in text
