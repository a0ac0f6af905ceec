"""The "auto" backend's two plans (nn.auto_plans): NumPy's plan until the switch call, numba's
after -- the same numbers as the NumPy backend's at every step (float64, 1e-12) across the
switch (the steady path, set_grad_hidden_state, remember / forget, evaluation), the switch made
where the call counts say ($TAPERNN_AUTO_PLANS: small counts here), the packed kernel asked for
at compile time (the worker held meanwhile), and the report's note and peak. Cost: numba
training pairs compiled (~seconds cold, ~1 s warm)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import backends, nn
from tapernn.backends import background, numba_missing, packed, worker_pause
from tapernn.errors import TapernnError
from tapernn.interpret import interpret
from tapernn.nn import auto_plans

pytestmark = pytest.mark.skipif(bool(numba_missing()), reason="numba is not usable here")

T, B, H = 3, 8, 256  # (a step's gates: B * 4H = 8192 elements, auto_plans.MIN_ELEMENTS)


@pytest.fixture
def auto(monkeypatch):
    """ "auto" chosen (restored after), numba's plan traced at call 2 and run from call 4."""
    monkeypatch.setenv("TAPERNN_AUTO_PLANS", "2,4")
    monkeypatch.setattr(backends, "_chosen", "auto")


def model(backend: str = "", h: int = H):
    tn.manual_seed(0)
    seq = nn.Sequencer(nn.FastLSTM(h, h))
    if backend:
        seq.set_plan_options(tn.PlanOptions(backend=backend))
    return seq


def data(k: int, h: int = H):
    return np.random.default_rng(k).standard_normal((2, T, B, h))


def ran(seq) -> str:
    """The backend of the training forward the model's last call ran."""
    return seq._runtime.last.compile_training().forward.program.backend


def same(a, b):
    np.testing.assert_allclose(a.output, b.output, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.grad_input, b.grad_input, rtol=1e-12, atol=1e-12)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-12)


def step(seq, k: int):
    x, g = data(k)
    seq.forward(x)
    seq.zero_grad_parameters()
    seq.backward(x, g)


def test_the_switch_at_the_call_counts_with_numpy_numbers_and_the_steady_path_after(auto):
    two, ref = model(), model("numpy")
    backend, steady = [], []
    for k in range(6):
        for seq in (two, ref):
            step(seq, k)
        backend.append(ran(two))
        steady.append(two._runtime.steady is not None)
        same(two, ref)
    assert backend == ["numpy"] * 3 + ["numba"] * 3
    assert steady == [False] * 3 + [True] * 3  # (off until the switch: nn.runtime)
    # the numba plan's forward against the reference interpreter on its own graph
    exe, x = two._runtime.last, data(6)[0]
    want = interpret(exe.graph, *exe.bind([x]))[0]
    np.testing.assert_allclose(two.forward(x), want, rtol=1e-12, atol=1e-12)


def test_the_report_says_when_and_counts_both_plans_until_the_switch(auto):
    two = model()
    step(two, 0)
    note = two.compile_report().backend_note
    assert note.startswith("auto: NumPy's plan until call 4, numba's plan from call 4")
    alone = two.compile_report().peak_bytes
    step(two, 1)  # (the start call: numba's plan traced)
    # (one Arena for both plans, grown to the numba plan's buffers: the window's peak counts it)
    first, other = two._runtime.last, two._runtime.last.two_plans.other
    grown = other.report().arena_bytes - first.report().arena_bytes
    assert grown > 0 and two.compile_report().peak_bytes == alone + grown
    step(two, 2)
    step(two, 3)  # numba's plan: the NumPy one dropped
    assert ran(two) == "numba" and two._runtime.last.two_plans is None
    assert two.compile_report().backend_note == note
    assert two.compile_report().peak_bytes == two._runtime.last.report().peak_bytes
    assert not auto_plans.pending()


def test_the_packed_kernel_is_asked_for_when_numbas_plan_compiles(auto, monkeypatch):
    if not packed.available():
        pytest.skip("no packed kernel on this CPU")
    monkeypatch.setenv("TAPERNN_NUMBA_BACKGROUND", "1")  # (conftest: 0, compiled at first call)
    asked, done = [], []  # (kernel, types) asked for; whether each was made by then
    held = []  # whether the worker was held then (background.held: not beside the trace)
    request = background.request

    def recorded(handle, key):
        event = request(handle, key)
        asked.append((handle, key))
        done.append(event.is_set())
        held.append(worker_pause._pause[0] > 0)
        return event

    monkeypatch.setattr(background, "request", recorded)
    two = model(h=264)  # (a shape of its own: its step programs compiled afresh here)
    x, g = data(0, 264)
    for _ in range(2):  # (the second: the start call, numba's plan compiled, not run)
        two.forward(x)
        two.backward(x, g)
    kernel = (packed.handle(), ((np.dtype(np.float64).str,),))
    assert kernel in asked
    assert all(held)  # (its compile waited for no kernel: it ran alone, the worker held)
    assert ran(two) == "numpy"
    backends.wait_for_kernels()
    assert packed.handle().has(kernel[1])  # (ready before the switch call: it waits for nothing)
    before = len(asked)
    for _ in range(2):  # (the second: the switch call)
        two.forward(x)
        two.backward(x, g)
    assert ran(two) == "numba"
    # (the PackedSite's own request at its first call found it made: nothing to wait for)
    at_switch = [done[k] for k in range(before, len(asked)) if asked[k] == kernel]
    assert at_switch and all(at_switch)


def test_grad_hidden_state_and_remember_across_the_switch(auto):
    two, ref = model().remember("both"), model("numpy").remember("both")
    hs = (np.ones((B, H)), np.full((B, H), 0.5))
    backend = []
    for k in range(7):
        x, g = data(k)
        for seq in (two, ref):
            seq.forward(x)
            if k in (2, 3, 5):  # (before, at and after the switch)
                seq.module.set_grad_hidden_state(T - 1, hs)
            seq.zero_grad_parameters()
            seq.backward(x, g)
        same(two, ref)
        backend.append(ran(two))
        if k == 4:
            for seq in (two, ref):
                seq.forget()
    # (counted per signature: from zeros -- calls 0 and 5 -- and from a remembered state)
    assert backend == ["numpy"] * 4 + ["numba", "numpy", "numba"]


def test_evaluation_switches_on_its_own_counts_with_the_same_numbers(auto):
    two, ref = model(), model("numpy")
    for k in range(5):
        for seq in (two, ref):
            step(seq, k)
    for seq in (two, ref):
        seq.evaluate()
    backend = []
    for k in range(5):  # (evaluation: a signature of its own, counted from its first call)
        x = data(10 + k)[0]
        np.testing.assert_allclose(two.forward(x), ref.forward(x), rtol=1e-12, atol=1e-12)
        backend.append(two._runtime.last.compile_forward().program.backend)
    assert backend == ["numpy"] * 3 + ["numba"] * 2
    two.training()
    step(two, 5)
    assert ran(two) == "numba"  # (training's signature: switched before)


def test_a_small_loop_beside_a_large_one_switches_too(auto):
    # a transducer: the LSTM's loop large, the Sequencer(Linear)'s small enough for a numba loop
    # kernel -- numba's plan from the switch all the same, numbers the NumPy backend's
    def transducer(backend: str = ""):
        tn.manual_seed(0)
        m = nn.Sequential(
            nn.Sequencer(nn.FastLSTM(H, H)), nn.Sequencer(nn.Linear(H, 3)), nn.Sequencer(nn.Tanh())
        )
        if backend:
            m.set_plan_options(tn.PlanOptions(backend=backend))
        return m

    two, ref = transducer(), transducer("numpy")
    backend = []
    for k in range(5):
        x = data(k)[0]
        g = np.random.default_rng(100 + k).standard_normal((T, B, 3))
        for m in (two, ref):
            m.forward(x)
            m.zero_grad_parameters()
            m.backward(x, g)
        backend.append(two._runtime.last.options.backend)  # (the plan's, not its lowering's)
        same(two, ref)
    assert backend == [""] * 3 + ["numba"] * 2  # ("": the policy, "auto" here)


def test_small_steps_and_other_backends_keep_one_plan(auto):
    # (144: 4608 elements a step < MIN_ELEMENTS, where numba's step was no faster)
    cases = (
        (model(h=144), 144, "numpy"),
        (model("numpy"), H, "numpy"),
        (model("numba"), H, "numba"),
    )
    for seq, h, want in cases:
        for k in range(5):
            x, g = data(k, h)
            seq.forward(x)
            seq.backward(x, g)
        assert seq._runtime.last.two_plans is None
        assert ran(seq) == want


@pytest.mark.parametrize("text", ["3", "0,2", "4,4", "a,b"])
def test_bad_plan_counts_say_what_is_expected(monkeypatch, text):
    monkeypatch.setenv("TAPERNN_AUTO_PLANS", text)
    with pytest.raises(TapernnError, match="start,switch"):
        auto_plans.plan_calls()


def test_numbas_plan_failing_to_trace_keeps_numpys_plan_with_a_warning(auto, monkeypatch):
    # numba's plan raising while traced (a numba planning failure: NumPy's plan of the same
    # model traced fine) raised at every call from the start call on; now the signature keeps
    # NumPy's plan -- the same numbers -- and the report and a warning say why, tried once
    tries = []

    def fails(self, trace):
        tries.append(self.calls)
        raise RuntimeError("no numba plan today")

    monkeypatch.setattr(auto_plans.TwoPlans, "_compile", fails)
    two, ref = model(), model("numpy")
    for k in range(6):
        for seq in (two, ref):
            if seq is two and k == 1:
                with pytest.warns(RuntimeWarning, match="no numba plan today"):
                    step(seq, k)
            else:
                step(seq, k)
        if k == 0:
            plans = two._runtime.last.two_plans
        same(two, ref)
        assert ran(two) == "numpy"
    assert tries == [2]
    note = two.compile_report().backend_note
    assert (
        "NumPy's plan (at call 2, numba's plan failed: RuntimeError: no numba plan today)" in note
    )
    assert two._runtime.steady is not None and plans not in auto_plans._PENDING


def test_set_backend_numpy_after_the_first_call_keeps_numpys_plan(auto):
    # set_backend rules later compiles: numba's plan, traced at the start call after the user
    # chose "numpy", was made and switched to all the same
    two, ref = model(), model("numpy")
    step(two, 0)
    step(ref, 0)
    tn.set_backend("numpy")
    for k in range(1, 6):
        for seq in (two, ref):
            step(seq, k)
        same(two, ref)
        assert ran(two) == "numpy"
    assert "set_backend('numpy')" in two.compile_report().backend_note
