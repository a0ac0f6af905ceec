"""A close "auto" layout decision re-checked on the real training steps (nn/layout_recheck,
issue 19): structural tests on injected timings -- the trial and the re-check's step times are
faked, never asserted on."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import backends, nn
from tapernn.nn import executable, layout_recheck
from tapernn.passes import layout_rule

B, T, H = 32, 6, 64  # recurrent GEMM (32, 64) @ (64, 256): timed by the rule


@pytest.fixture
def fake(monkeypatch):
    """Process-only decisions; the GEMM pre-filter favours feature-major; the whole-step trial
    says `fake.trial` (feature / batch); the re-check's steps take 1.0 batch-major and
    `fake.step` feature-major; Executables traced are counted."""
    monkeypatch.setenv("TAPERNN_LAYOUT_CACHE", "off")
    monkeypatch.setenv("TAPERNN_LAYOUT_TRIAL", "1")  # (conftest: off for the session)
    monkeypatch.setattr(layout_rule, "_DECIDED", {})
    monkeypatch.setattr(layout_rule, "_RECHECK", set())
    monkeypatch.setattr(layout_rule, "gemm_times", lambda *a: (1e-3, 0.5e-3))

    class Fake:
        trial = 0.93
        step = 0.5
        traced = 0

    monkeypatch.setattr(layout_rule, "_TIMER", [lambda *a: [(1.0, Fake.trial)] * 3])

    def record(self, exe, seconds):
        self.times[id(exe)].append(Fake.step if exe.options.layout == "feature" else 1.0)

    monkeypatch.setattr(layout_recheck.Recheck, "record", record)
    init = executable.Executable.__init__

    def counted(self, *a, **k):
        Fake.traced += 1
        init(self, *a, **k)

    monkeypatch.setattr(executable.Executable, "__init__", counted)
    monkeypatch.setattr(layout_recheck, "COMPILES", [0])
    return Fake


def models():
    tn.manual_seed(0)
    auto = nn.Sequencer(nn.FastLSTM(H, H))
    ref = nn.Sequencer(nn.FastLSTM(H, H)).set_plan_options(tn.PlanOptions(layout="batch"))
    ref.load_state_dict(auto.state_dict())
    return auto, ref


def train(auto, ref, steps):
    """`steps` training steps of both models; per step the layout `auto` ran in, after
    checking outputs, input gradients and parameter gradients against `ref` (to 1e-12)."""
    rng = np.random.default_rng(1)
    ran = []
    for _ in range(steps):
        x = rng.standard_normal((T, B, H)) * 0.1
        g = rng.standard_normal((T, B, H))
        for m in (auto, ref):
            m.zero_grad_parameters()
        y, gi = auto.forward(x).copy(), auto.backward(x, g).copy()
        ran.append(auto._runtime.last.options.layout)
        np.testing.assert_allclose(y, ref.forward(x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gi, ref.backward(x, g), rtol=1e-12, atol=1e-12)
        for a, b in zip(auto.parameters(), ref.parameters()):
            np.testing.assert_allclose(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    return ran


def layout_notes(m):
    return [n for n in m.compile_report().notes if n.startswith("layout")]


def test_a_close_trial_falls_back_and_the_recheck_switches_once(fake):
    """Trial 0.93x (close): batch-major by the shape rule; WARM steps in, the other layout is
    compiled once and timed against it in interleaved steps; feature-major at 0.5x switches
    for good -- results equal to a fixed batch-major model at 1e-12 in float64 before, during
    and after, one second trace, no further re-check."""
    auto, ref = models()
    ran = train(auto, ref, layout_recheck.WARM)
    assert ran == ["batch"] * layout_recheck.WARM
    assert "a close call" in layout_notes(auto)[0]
    traced = fake.traced
    n = layout_recheck.ALT_WARM + 2 * layout_recheck.ROUNDS
    ran = train(auto, ref, n + 6)
    assert ran[:n].count("feature") == layout_recheck.ROUNDS + layout_recheck.ALT_WARM
    assert ran[n:] == ["feature"] * 6  # switched, and stays
    assert layout_recheck.COMPILES == [1]
    assert fake.traced == traced + 1  # the only recompile
    rt = auto._runtime
    (exe,) = rt.cache.values()
    assert exe.recheck is None and exe.options.layout == "feature"
    assert rt.steady is not None  # the fast path is planned again after the re-check
    notes = layout_notes(auto)
    assert any("switched to feature-major" in n and "0.50x" in n for n in notes), notes
    # settled: a new model of the same shapes takes feature-major with no trial, no re-check
    fake.trial = 1.0  # (would be close again if it were timed)
    auto2, ref2 = models()
    assert train(auto2, ref2, layout_recheck.WARM + 3) == ["feature"] * (layout_recheck.WARM + 3)
    assert layout_recheck.COMPILES == [1]


def test_a_recheck_that_finds_no_clear_gain_keeps_the_first(fake):
    fake.step = 0.95  # feature-major only 5 % faster on the real steps: not <= SWITCH
    auto, ref = models()
    n = layout_recheck.WARM + layout_recheck.ALT_WARM + 2 * layout_recheck.ROUNDS
    ran = train(auto, ref, n + 4)
    assert ran[n:] == ["batch"] * 4 and layout_recheck.COMPILES == [1]
    assert any("kept batch-major" in n for n in layout_notes(auto))
    (exe,) = auto._runtime.cache.values()
    assert exe.recheck is None


@pytest.mark.parametrize("trial, pick", [(0.5, "feature"), (1.3, "batch")])
def test_a_clear_trial_is_not_rechecked(fake, trial, pick):
    fake.trial = trial
    auto, ref = models()
    ran = train(auto, ref, layout_recheck.WARM + layout_recheck.ALT_WARM + 3)
    assert set(ran) == {pick} and layout_recheck.COMPILES == [0]
    (exe,) = auto._runtime.cache.values()
    assert exe.recheck is None


def test_evaluation_calls_do_not_start_a_recheck(fake):
    auto, _ = models()
    auto.evaluate()
    x = np.ones((T, B, H)) * 0.1
    for _ in range(layout_recheck.WARM + 4):
        auto.forward(x)
    assert layout_recheck.COMPILES == [0]


def test_a_steady_loop_peak_is_measured_after_the_recheck_settles(fake):
    """During a re-check the model holds both layouts' programs: the loop-peak measurement (the
    bench's, the peak tests') runs its measured steps only once it has settled."""
    from tapernn.apps.benchmark.memory import loop_peak_bytes

    auto, _ = models()
    x = np.random.default_rng(2).standard_normal((T, B, H)) * 0.1
    g = np.ones((T, B, H))
    settled_at = []

    def step():
        auto.zero_grad_parameters()
        auto.forward(x)
        auto.backward(x, g)
        (exe,) = set(auto._runtime.cache.values())
        settled_at.append(exe.recheck is None)
        pending.append(layout_recheck.pending())

    pending = []
    assert loop_peak_bytes(step, warmup=2, steps=3) > 0
    assert pending[:2] == [True, True]  # (the close trial made one; it starts at step WARM + 1)
    assert not layout_recheck.pending() and layout_recheck.COMPILES == [1]
    assert settled_at[-4:] == [True] * 4  # the 3 measured steps and the one before: settled
    assert len(settled_at) <= 2 + layout_recheck.STEPS + 3


@pytest.mark.skipif(bool(backends.numba_missing()), reason="numba is not usable here")
@pytest.mark.parametrize("step", [0.5, 0.95])  # (the other layout wins; the first is kept)
def test_auto_plans_count_from_the_rechecks_settling(fake, monkeypatch, step):
    """The "auto" backend's two plans (nn.auto_plans) after a re-check: NumPy's plan settles
    its layout first; numba's plan is counted from the settling (traced 2, run 4 training
    forwards after it) and keeps its own layout rule's choice -- the same numbers throughout."""
    monkeypatch.setenv("TAPERNN_AUTO_PLANS", "2,4")
    monkeypatch.setattr(backends, "_chosen", "auto")
    fake.step = step
    auto, ref = models()
    ref.set_plan_options(tn.PlanOptions(layout="batch", backend="numpy"))
    n = layout_recheck.STEPS  # (the settling call: the re-check's last)
    train(auto, ref, n)
    assert auto._runtime.last.recheck is None and auto._runtime.last.two_plans is not None
    backend = []
    for _ in range(5):
        train(auto, ref, 1)
        backend.append(auto._runtime.last.compile_training().forward.program.backend)
    assert backend == ["numpy"] * 3 + ["numba"] * 2
    assert layout_recheck.COMPILES == [1] and not layout_recheck.pending()
