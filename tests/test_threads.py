"""One model shared by threads: every call correct (as if run alone) or a StateError, never a
silent mix; separate models keep running in parallel (no global lock)."""

from __future__ import annotations

import copy
import sys
import threading

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


@pytest.fixture(autouse=True)
def fast_switching():
    """Switch threads every few microseconds: races that need luck otherwise show every run."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def model() -> nn.Module:
    tn.manual_seed(0)
    return (
        nn.Sequential()
        .add(nn.Sequencer(nn.LSTM(3, 5)))
        .add(nn.SelectTable(-1))
        .add(nn.Linear(5, 2))
    )


def inputs(n: int = 6) -> list[np.ndarray]:
    return [np.random.default_rng(k).standard_normal((4, 2, 3)) for k in range(n)]


def hammer(work, n_threads: int = 4) -> list:
    """Run work(i) in n threads at once; the exceptions they raised."""
    errors: list = []
    barrier = threading.Barrier(n_threads)

    def run(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except Exception as e:  # noqa: BLE001  # reported to the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


@pytest.mark.parametrize("mode", ["evaluate", "training"])
def test_forwards_from_four_threads_equal_serial_results(mode):
    m = getattr(model(), mode)()
    xs = inputs()
    expected = [m.forward(x).copy() for x in xs]
    wrong = []

    def work(i: int) -> None:
        for r in range(40):
            k = (i + r) % len(xs)
            if not np.array_equal(m.forward(xs[k]), expected[k]):
                wrong.append(k)

    assert hammer(work) == [] and wrong == [], f"{len(wrong)} of 160 forwards wrong"


def test_forward_backward_pairs_under_locked_equal_serial_results():
    m = model()
    xs = inputs()
    g = np.ones((2, 2))
    serial = []
    m.zero_grad_parameters()
    for x in xs:
        m.forward(x)
        serial.append(m.backward(x, g).copy())
    total = {k: p.grad.copy() for k, p in m.named_parameters().items()}
    m.zero_grad_parameters()
    wrong = []

    def work(i: int) -> None:
        for r in range(len(xs)):
            k = (i + r) % len(xs)
            with m.locked():
                m.forward(xs[k])
                if not np.array_equal(m.backward(xs[k], g), serial[k]):
                    wrong.append(k)

    assert hammer(work, 3) == [] and wrong == []
    for k, p in m.named_parameters().items():  # each thread accumulated every input's gradient
        np.testing.assert_allclose(p.grad, 3 * total[k], rtol=1e-10, atol=1e-12)


def test_unlocked_forward_backward_pairs_are_right_or_refused():
    m = model()
    xs = inputs()
    g = np.ones((2, 2))
    serial = []
    for x in xs:
        m.forward(x)
        serial.append(m.backward(x, g).copy())
    wrong = []

    def work(i: int) -> None:
        for r in range(30):
            k = (i + r) % len(xs)
            m.forward(xs[k])
            try:
                got = m.backward(xs[k], g)
            except tn.StateError as e:
                assert "another thread" in str(e) or "thread" in str(e)
                continue
            if not np.array_equal(got, serial[k]):
                wrong.append(k)

    assert hammer(work) == [] and wrong == [], f"{len(wrong)} backwards silently wrong"


def in_thread(fn):
    box = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except Exception as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=60)
    return box


def test_backward_of_another_threads_forward_is_refused():
    m = model()
    x = inputs(1)[0]
    in_thread(lambda: m.forward(x))
    with pytest.raises(tn.StateError, match="forward run by thread"):
        m.backward(x, np.ones((2, 2)))
    m.forward(x)  # a forward of this thread: fine again
    m.backward(x, np.ones((2, 2)))


def test_stepping_another_threads_sequence_is_refused_until_forget():
    tn.manual_seed(0)
    lstm = nn.LSTM(3, 4)
    x = np.ones((2, 3))
    assert "error" not in in_thread(lambda: [lstm.forward(x) for _ in range(3)])
    with pytest.raises(tn.StateError, match="continue the sequence"):
        lstm.forward(x)
    lstm.forget()
    lstm.forward(x)
    lstm.forward(x)


def blocked_while_held(
    holder: nn.Module, other: nn.Module, x: np.ndarray, wait: float = 30.0
) -> bool:
    """Whether other.forward(x) in another thread waits (`wait` s) while this thread holds
    holder's lock."""
    done = threading.Event()
    with holder.locked():
        t = threading.Thread(target=lambda: (other.forward(x), done.set()))
        t.start()
        finished = done.wait(timeout=wait)
    t.join(timeout=60)
    return not finished


def test_separate_models_are_not_serialised_but_shared_modules_are():
    x = inputs(1)[0]
    a, b = model(), model()
    a.forward(x)
    b.forward(x)
    assert not blocked_while_held(a, b, x)  # no global lock
    assert not blocked_while_held(a, copy.deepcopy(a), x)  # a copy has its own lock
    shared = nn.Linear(3, 3)
    t1 = nn.Sequential().add(shared).add(nn.Tanh())
    t1.forward(np.ones((2, 3)))
    t2 = nn.Sequential().add(nn.Sigmoid()).add(shared)  # shares state with t1: one lock
    assert blocked_while_held(t1, t2, np.ones((2, 3)), wait=0.5)
    assert blocked_while_held(t1, shared, np.ones((2, 3)), wait=0.5)
