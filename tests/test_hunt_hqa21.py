"""hqa21: the "auto" layout rule's timed trial, the test session's independence of it, and
`reset()` of a module built with `rng=`.

- The suite read the layout rule's timed choices (a trial under load chose feature-major for a
  peephole LSTM a test asserted batch-major slabs of): under tests "auto" now times nothing
  ($TAPERNN_LAYOUT_TRIAL=0, the shape rule's batch-major); the rule's own tests turn it on.
- The trial timed the numba compiler: one warm-up call, then the switch call (which waits for
  the kernels) timed, and kernels arriving mid-round counted in the process's CPU time. On a
  cold kernel cache main's trial read batch-major 4909 / 73 / 8.8 ms against feature-major's
  5.0 / 5.1 / 8.3 and picked feature-major "clearly faster". Now each program is called until
  steady, rounds the compiler overlapped are run again, and noisy rounds decide nothing.
- `reset()` drew from the global generator for a module built with `rng=`.
Each test here failed on main (checked).
"""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn, scan_layout
from tapernn.backends import background
from tapernn.passes import layout_rule


def test_the_test_session_times_no_layout(monkeypatch):
    """conftest turns the trial off: a loop the rule would time is batch-major, untimed."""
    monkeypatch.setattr(layout_rule, "_DECIDED", {})

    def timed(*args):
        raise AssertionError("the layout rule timed GEMMs in the test session")

    monkeypatch.setattr(layout_rule, "gemm_times", timed)
    m = nn.Sequencer(nn.FastLSTM(4, 64)).set_plan_options(tn.PlanOptions(layout="auto"))
    m.forward(np.ones((3, 32, 4)))  # (recurrent GEMM (32, 64) @ (64, 256): timed for users)
    notes = [n for n in m.compile_report().notes if n.startswith("layout")]
    why = "the measured shape rule, batch-major: not timed ($TAPERNN_LAYOUT_TRIAL=0)"
    assert notes == [f"layout (loop (top)): batch-major (auto: {why})"]


def test_the_trial_programs_run_on_one_thread(monkeypatch):
    """Both arms compiled with own_threads="off": batch-major's owned worker thread ran half of
    its time-batched GEMMs, and that thread's CPU (its spin after a call too) landed in the
    next timed call -- (16, 130) f64 on numba alternated 4.2 / 6 ms by round parity and read
    noisy; on one thread 3.8-4.8 ms, 1.38x batch-major clearly."""
    seen = []
    real = scan_layout.executor.compile

    def compile(graph, options):
        seen.append(options.own_threads)
        return real(graph, options=options)

    monkeypatch.setattr(scan_layout.executor, "compile", compile)
    step = tn.trace(
        lambda h, x, u: [tn.tanh(x + h @ u)] * 2, *[np.ones((2, 3))] * 2, np.ones((3, 3))
    )
    scan_layout.step_programs(step, 1, 1, "numpy")
    assert seen == ["off", "off"]


class _Program:
    """A fake compiled program: each call costs `cost` fake CPU seconds; its `slow`-th call
    `slow_cost` (a compile it waits for)."""

    graph = SimpleNamespace(inputs=[])

    def __init__(self, now, cost, slow=0, slow_cost=0.0, arrive=None):
        self.now, self.cost, self.slow, self.slow_cost, self.arrive = (
            now,
            cost,
            slow,
            slow_cost,
            arrive,
        )
        self.calls = 0
        self.report = SimpleNamespace(loops=[], fallbacks=[])

    def run(self, args):
        self.calls += 1
        if self.calls == self.slow:
            self.now[0] += self.slow_cost
            if self.arrive is not None:  # a kernel the background compiler makes meanwhile
                background.request(self.arrive, ("hqa21", id(self))).wait()
        self.now[0] += self.cost

    def __call__(self, *args):
        return self.run(args)


@pytest.fixture
def fake_trial(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(scan_layout, "_clock", lambda: now[0])
    monkeypatch.setattr(scan_layout, "BUDGET", 1e9)
    return now


def test_the_switch_call_waiting_for_kernels_is_not_timed(fake_trial, monkeypatch):
    """A numba program compiling in the background runs NumPy at call 1 and waits for its
    kernels at its switch call (2): main timed that call (one warm-up call only)."""
    progs = [_Program(fake_trial, 1.0, 2, 100.0), _Program(fake_trial, 0.5, 2, 100.0)]
    for p in progs:
        background.install_gate(p, (1, 2))
    monkeypatch.setattr(scan_layout, "step_programs", lambda *a: progs)
    rounds = scan_layout.time_steps(None, 1, 0)
    assert len(rounds) >= scan_layout.MIN_ROUNDS and set(rounds) == {(1.0, 0.5)}


def test_a_kernel_compiled_during_a_round_is_not_timed(fake_trial, monkeypatch):
    """The background compiler's CPU time is the process's: a round it overlapped (here a
    kernel of 10 fake s arriving during batch-major's second call) is run again."""

    class Handle:
        def prepare(self, key):
            fake_trial[0] += 10.0

    handle = Handle()
    progs = [_Program(fake_trial, 1.0, 2, 0.0, handle), _Program(fake_trial, 0.5)]
    monkeypatch.setattr(scan_layout, "step_programs", lambda *a: progs)
    rounds = scan_layout.time_steps(None, 1, 0)
    assert len(rounds) >= scan_layout.MIN_ROUNDS and set(rounds) == {(1.0, 0.5)}


def test_noisy_rounds_decide_nothing_and_are_not_kept(tmp_path, monkeypatch):
    """Rounds whose layouts each scatter over NOISE of their best: main read the best ratio
    (0.5x) and the median ratio (0.5x) and picked feature-major; now no decision (batch-major,
    not on disk: a later process times again)."""
    rounds = [(1.0, 0.5), (3.0, 1.0), (3.0, 2.0)]
    pick, why = layout_rule.decide(rounds)
    assert pick == "batch" and why.startswith("default (a noisy trial:")
    assert "batch-major 3.00x, feature-major 2.00x in 3 rounds" in why
    assert layout_rule.decide([(1.0, 0.5), (1.1, 0.52), (1.05, 0.55)])[0] == "feature"

    path = tmp_path / "layout-rule.json"
    monkeypatch.setenv("TAPERNN_LAYOUT_CACHE", str(path))
    monkeypatch.setenv("TAPERNN_LAYOUT_TRIAL", "1")
    monkeypatch.setattr(layout_rule, "_DECIDED", {})
    monkeypatch.setattr(layout_rule, "gemm_times", lambda *a: (1e-3, 0.5e-3))
    monkeypatch.setattr(layout_rule, "_TIMER", [lambda *a: rounds])
    m = nn.Sequencer(nn.FastLSTM(4, 64)).set_plan_options(tn.PlanOptions(layout="auto"))
    m.forward(np.ones((3, 32, 4)))
    notes = [n for n in m.compile_report().notes if n.startswith("layout")]
    assert len(notes) == 1 and "float64: default (a noisy trial" in notes[0], notes
    assert not path.exists()


def test_the_trial_runs_more_rounds_while_noisy(fake_trial, monkeypatch):
    """A noisy start runs on (up to MAX_ROUNDS) until the rounds are steady."""
    costs = itertools.chain([3.0, 1.0, 3.0, 3.0], itertools.repeat(1.0))

    class Noisy(_Program):
        def run(self, args):
            self.now[0] += next(costs) if self.cost == 1.0 else self.cost

    progs = [Noisy(fake_trial, 1.0), Noisy(fake_trial, 0.5)]
    monkeypatch.setattr(scan_layout, "step_programs", lambda *a: progs)
    rounds = scan_layout.time_steps(None, 1, 0)
    assert [b for b, _ in rounds] == [1.0, 3.0, 3.0, 1.0, 1.0]  # (call 1: the warm-up's)
    assert not layout_rule.noisy(rounds)


def _params(m):
    return [p.data.copy() for p in m.parameters()]


@pytest.mark.parametrize(
    "make", [lambda g: nn.Linear(5, 3, rng=g), lambda g: nn.SeqLSTM(3, 4, rng=g)]
)
def test_reset_draws_from_the_generator_the_module_was_built_with(make):
    """reset() after building with rng=g draws what a second module built from g draws, and
    leaves the global generator alone."""
    tn.manual_seed(7)
    before = tn.random.generator().bit_generator.state
    m = make(np.random.default_rng(11))
    m.reset()
    assert tn.random.generator().bit_generator.state == before
    g = np.random.default_rng(11)
    make(g)
    for got, want in zip(_params(m), _params(make(g))):
        np.testing.assert_array_equal(got, want)


def test_reset_stdv_draws_from_the_modules_generator():
    """reset(stdv): U(+-stdv) for each parameter in turn (Torch7), from the module's rng."""
    tn.manual_seed(7)
    before = tn.random.generator().bit_generator.state
    m = nn.Linear(5, 3, rng=np.random.default_rng(11)).reset(0.3)
    assert tn.random.generator().bit_generator.state == before
    g = np.random.default_rng(11)
    nn.Linear(5, 3, rng=g)
    for got, p in zip(_params(m), m.parameters()):
        np.testing.assert_array_equal(got, g.uniform(-0.3, 0.3, p.shape))


def test_a_recheck_step_the_compiler_overlapped_is_timed_again(monkeypatch):
    """The layout re-check's timed training steps: one during which a kernel compiled in the
    background (its CPU time the process's) gives NaN and queues another step (main recorded
    it: here 10 fake s among 1 s steps)."""
    from tapernn.nn import layout_recheck

    now = [0.0]
    monkeypatch.setattr(layout_recheck, "_clock", lambda: now[0])

    class Handle:
        def prepare(self, key):
            now[0] += 9.0

    handle = Handle()

    def step(arrive):
        if arrive:
            background.request(handle, ("hqa21-recheck", id(step))).wait()
        now[0] += 1.0

    assert layout_recheck.timed(step, False)[1] == 1.0
    assert np.isnan(layout_recheck.timed(step, True)[1])

    def exe(layout):
        return SimpleNamespace(options=SimpleNamespace(layout=layout), notes=[], recheck=None)

    first, other = exe("batch"), exe("feature")
    check = layout_recheck.Recheck(first, [])
    for _ in range(layout_recheck.WARM + 1):
        check.executable(lambda: other)
    queued = len(check.queue)
    check.record(other, float("nan"))
    check.record(other, 0.5)
    assert check.times[id(other)] == [0.5] and len(check.queue) == queued + 1
    assert check.queue[-1] == (other, True)
    layout_recheck._PENDING.discard(check)  # (not settled: no model waits on it)
