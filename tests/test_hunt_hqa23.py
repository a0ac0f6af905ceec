"""QA round hqa23: what a user met around "auto"'s two plans (each test fails on the code before
its fix)."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import backends, nn
from tapernn.backends import numba_missing

BACKENDS = [
    "numpy",
    pytest.param("numba", marks=pytest.mark.skipif(bool(numba_missing()), reason="no numba")),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("own", [True, False])
def test_dropout_masks_are_the_generators_successive_draws(backend, own):
    # planning the steady path bound the program's arguments once -- drawing a dropout mask it
    # threw away: from the second call each mask skipped one draw of the generator (the
    # module's rng= or tapernn's), so a run's masks depended on when the steady path planned
    # ("auto" plans it only from its switch call: its masks differed from the NumPy backend's)
    x = np.random.default_rng(1).standard_normal((4, 6))
    tn.manual_seed(7)
    m = nn.Dropout(0.5, rng=np.random.default_rng(7) if own else None)
    m.set_plan_options(tn.PlanOptions(backend=backend))
    draws = np.random.default_rng(7)  # (tn.manual_seed(7)'s generator, or the module's)
    for k in range(4):
        want = x * (draws.random(x.shape) >= 0.5) * 2.0
        np.testing.assert_array_equal(m.forward(x), want, err_msg=f"call {k}")
        np.testing.assert_array_equal(m.backward(x, x), want, err_msg=f"call {k}")


@pytest.fixture
def auto(monkeypatch):
    """ "auto" chosen (restored after), numba's plan traced at call 2 and run from call 4."""
    monkeypatch.setenv("TAPERNN_AUTO_PLANS", "2,4")
    monkeypatch.setattr(backends, "_chosen", "auto")


def _run(make, backend: str, calls, seed: int = 5) -> list:
    """Outputs, input gradients and parameter gradients of `calls` (x, g) training calls."""
    tn.manual_seed(0)
    m = make()
    if backend:
        m.set_plan_options(tn.PlanOptions(backend=backend))
    tn.manual_seed(seed)  # (the masks' stream)
    got = []
    for x, g in calls:
        m.forward(x)
        m.zero_grad_parameters()
        m.backward(x, g)
        got.append([m.output, m.grad_input] + [p.grad.copy() for p in m.parameters()])
    return got


@pytest.mark.skipif(bool(numba_missing()), reason="no numba")
def test_auto_draws_the_numpy_backends_dropout_masks_across_its_switch(auto):
    # (the NumPy backend planned its steady path at call 1, "auto" at its switch: the masks
    # drifted apart from the second call)
    T, B, H = 3, 8, 256  # (a step's gates: 8192 elements, auto_plans.MIN_ELEMENTS)

    def make():
        return nn.Sequential(
            nn.Sequencer(nn.FastLSTM(H, H)),
            nn.Sequencer(nn.Dropout(0.3)),
            nn.Sequencer(nn.Linear(H, 5)),
        )

    rng = np.random.default_rng(0)
    calls = [(rng.standard_normal((T, B, H)), rng.standard_normal((T, B, 5))) for _ in range(6)]
    two, ref = _run(make, "", calls), _run(make, "numpy", calls)
    for k, (a, b) in enumerate(zip(two, ref)):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12, err_msg=f"call {k}")


_ARMED = [False]  # (outside the module: a changed setting would drop its programs)


class _Interrupted(nn.Identity):
    """The identity; its next trace once _ARMED raises KeyboardInterrupt (Ctrl-C while the
    model traces)."""

    def build(self, x):
        if _ARMED[0]:
            _ARMED[0] = False
            raise KeyboardInterrupt
        return x


@pytest.mark.skipif(bool(numba_missing()), reason="no numba")
def test_ctrl_c_while_auto_traces_numbas_plan_then_the_same_numbers(auto):
    # Ctrl-C during the start call's trace of numba's plan (its slowest call: a notebook user
    # interrupts it and runs the cell again): the switch call raised "AttributeError:
    # 'NoneType' object has no attribute 'recurrent'" (no second plan to switch to)
    T, B, H = 3, 8, 256

    def make(backend: str):
        tn.manual_seed(0)
        m = nn.Sequential(nn.Sequencer(nn.FastLSTM(H, H)), _Interrupted())
        return m.set_plan_options(tn.PlanOptions(backend=backend)) if backend else m

    two, ref = make(""), make("numpy")
    rng = np.random.default_rng(0)
    for k in range(6):
        x, g = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, H))
        if k == 1:  # (the start call: numba's plan traced)
            _ARMED[0] = True
            with pytest.raises(KeyboardInterrupt):
                two.forward(x)
        for m in (two, ref):
            m.forward(x)
            m.zero_grad_parameters()
            m.backward(x, g)
        np.testing.assert_allclose(two.output, ref.output, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(two.grad_input, ref.grad_input, rtol=1e-12, atol=1e-12)
        for p, q in zip(two.parameters(), ref.parameters()):
            np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, atol=1e-12)
    assert two._runtime.last.compile_training().forward.program.backend == "numba"
