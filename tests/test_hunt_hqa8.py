"""QA round hqa8: regression tests for what it found and the leftovers it closed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tests.sizes import ROOM_B, ROOM_H, ROOM_T

ROOT = Path(__file__).resolve().parents[1]

# a child that starts tn.save-ing `path` through atomic_write, says "half" once half the file is
# written and then waits until its stdin closes (to be SIGKILLed there: its temporary file stays
# behind; it waited 60 s before, and under load the test outlived the live save's wait)
_CHILD = textwrap.dedent(
    """
    import sys
    from tapernn import fileio
    def write(f):
        f.write(b"x" * 4096)
        f.flush()
        print("half", flush=True)
        sys.stdin.read()
    fileio.atomic_write(sys.argv[1], write)
    """
)


def _stuck_writer(path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert child.stdout.readline().strip() == "half"
    return child


def _temps(directory: Path) -> list[str]:
    return sorted(p for p in os.listdir(directory) if p.endswith(".tmp"))


def test_a_save_removes_the_temp_files_of_killed_saves_of_the_same_target_only(tmp_path):
    path = tmp_path / "m.npz"
    other = tmp_path / "m.npz.x.npz"  # (its temporaries start with ".m.npz." too)
    tn.manual_seed(0)
    model = nn.Linear(3, 2)
    live = _stuck_writer(path)  # a save in progress in another process: not to be touched
    try:
        killed = {}
        for target in (path, path, other):
            child = _stuck_writer(target)
            child.send_signal(signal.SIGKILL)
            child.wait()
            killed.setdefault(target, []).append(child.pid)
        left = _temps(tmp_path)
        # the second killed save of m.npz removed the first one's temporary when it started
        assert len(left) == 3, left
        for pid in (live.pid, killed[path][1], killed[other][0]):
            assert any(f".{pid}@" in name for name in left), (pid, left)
        tn.save(model, path)
        after = _temps(
            tmp_path
        )  # the killed save of m.npz: gone; the live one's and m.npz.x's stay
        assert len(after) == 2 and any(f".{live.pid}@" in n for n in after), after
        assert any(n.startswith(".m.npz.x.npz.") for n in after), after
        tn.save(model, other)
        assert [n for n in _temps(tmp_path) if f".{live.pid}@" not in n] == []
    finally:
        live.kill()
        live.wait()
    tn.save(model, path)
    assert _temps(tmp_path) == []
    got = nn.Linear(3, 2)
    tn.load_into(got, path)
    assert np.array_equal(got.weight.data, model.weight.data)


def test_temps_of_the_old_unnamed_form_are_left_alone(tmp_path):
    path = tmp_path / "m.npz"
    old = tmp_path / ".m.npz.k2j4_x9a.tmp"  # written by an earlier version: owner unknown
    old.write_bytes(b"x")
    tn.save(nn.Linear(2, 2), path)
    assert old.exists()


def _seq_after_steady_calls(backend: str):
    tn.manual_seed(0)
    # (test_cells' batched FastLSTM sizes, (T, B, D, H) = (4, 2, 3, 4): on numba the same
    # whole-program kernels, so a cold kernel cache compiles them once for both files)
    seq = nn.Sequencer(nn.FastLSTM(3, 4))
    seq.set_plan_options(tn.PlanOptions(backend=backend))
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    for _ in range(3):  # (the third call runs the steady path)
        y = seq.forward(x)
        seq.backward(x, np.ones_like(y))
    return seq, x, np.ones_like(y)


BAD_CALLS = {
    "backward lengths=": (
        lambda s, x, g: s.backward(x, g, lengths=np.array([4, 3])),
        "backward(input, grad_output, need_grad_input=True)",
        "lengths= goes to forward only",
    ),
    "backward need_grad_input= lengths=": (
        lambda s, x, g: s.backward(x, g, need_grad_input=False, lengths=np.array([4, 3])),
        "backward(input, grad_output, need_grad_input=True)",
        "unexpected keyword argument 'lengths'",
    ),
    "backward one argument": (
        lambda s, x, g: s.backward(x),
        "backward(input, grad_output, need_grad_input=True)",
        "'grad_output'",
    ),
    "backward four arguments": (
        lambda s, x, g: s.backward(x, g, True, 1),
        "backward(input, grad_output, need_grad_input=True)",
        "too many",
    ),
    "forward three arguments": (
        lambda s, x, g: s.forward(x, np.array([4, 3]), 1),
        "forward(input, lengths=None)",
        "too many",
    ),
    "forward misspelt keyword": (
        lambda s, x, g: s(x, lenghts=np.array([4, 3])),
        "forward(input, lengths=None)",
        "'lenghts'",
    ),
    "update_parameters no lr": (
        lambda s, x, g: s.update_parameters(),
        "update_parameters(lr)",
        "'lr'",
    ),
    "update_parameters momentum=": (
        lambda s, x, g: s.update_parameters(0.1, momentum=0.9),
        "update_parameters(lr)",
        "tn.optim.SGD",
    ),
    "zero_grad_parameters argument": (
        lambda s, x, g: s.zero_grad_parameters(0.1),
        "zero_grad_parameters()",
        "too many",
    ),
    "remember two modes": (
        lambda s, x, g: s.remember("both", "eval"),
        "remember(mode='both')",
        "too many",
    ),
    "inner cell backward lengths=": (
        lambda s, x, g: s.get(0).backward(x[0], g[0], lengths=[1]),
        "backward(input, grad_output, need_grad_input=True)",
        "'lengths'",
    ),
    "Linear forward lengths=": (
        lambda s, x, g: nn.Linear(3, 4).forward(x[0], lengths=[1, 1]),
        "forward(input)",
        "'lengths'",
    ),
    "criterion call without target": (
        lambda s, x, g: nn.MSECriterion()(x),
        "forward(input, target)",
        "'target'",
    ),
}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_wrong_arguments_of_entry_points_raise_an_argument_type_error(case, backend):
    seq, x, g = _seq_after_steady_calls(backend)
    call, takes, words = BAD_CALLS[case]
    with pytest.raises(tn.ArgumentTypeError) as info:
        call(seq, x, g)
    message = str(info.value)
    assert takes in message and words in message, message
    assert isinstance(info.value, TypeError)  # (what code catching TypeError saw before)
    # the model still works, steady path included, and gives what a fresh copy gives
    y = seq.forward(x)
    seq.zero_grad_parameters()
    gi = seq.backward(x, g)
    ref, _, _ = _seq_after_steady_calls("numpy")
    np.testing.assert_allclose(y, ref.forward(x), rtol=0, atol=1e-12)
    ref.zero_grad_parameters()
    np.testing.assert_allclose(gi, ref.backward(x, g), rtol=0, atol=1e-12)


def _layouts(a: np.ndarray) -> dict:
    strided = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    strided[..., ::2] = a
    return {
        "C": a,
        "F": np.asfortranarray(a),
        "batch-major memory": np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2),
        "strided": strided[..., ::2],
    }


@pytest.mark.parametrize("cell", ["FastLSTM", "LSTM", "GRU"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_inputs_in_any_memory_layout_give_the_c_ordered_results(cell, backend, monkeypatch):
    """numba's whole-program kernel reshaped its (T, B, D) argument for the input projection:
    a Fortran-ordered x (B > 1) raised numba's bare NotImplementedError ("incompatible shape
    for array") from the switch call on."""
    from tapernn.backends import numba_program

    monkeypatch.setattr(numba_program, "_programs", {})
    rng = np.random.default_rng(0)
    # (products of np.dot size; tests/sizes.py: FastLSTM's and LSTM's C-contiguous programs
    # are test_tap_room's numba ones)
    shape = (ROOM_T, ROOM_B, ROOM_H)
    x, g = rng.standard_normal(shape), rng.standard_normal(shape)
    tn.manual_seed(0)
    ref = nn.Sequencer(getattr(nn, cell)(ROOM_H, ROOM_H))
    ref.set_plan_options(tn.PlanOptions(backend="numpy"))
    want_y, want_gi = ref.forward(x), ref.backward(x, g)
    want_grads = [p.grad.copy() for p in ref.parameters()]
    tn.manual_seed(0)
    m = nn.Sequencer(getattr(nn, cell)(ROOM_H, ROOM_H))
    m.set_plan_options(tn.PlanOptions(backend=backend))
    xs, gs = _layouts(x), _layouts(g)
    order = ["F", "F", "F", "C", "batch-major memory", "strided", "F", "C"]  # F first: its types
    for k, name in enumerate(order):
        m.zero_grad_parameters()
        y = m.forward(xs[name])
        gi = m.backward(xs[name], gs[order[k - 1]])  # (g in another layout than x)
        np.testing.assert_allclose(y, want_y, rtol=0, atol=1e-12, err_msg=f"{name} call {k}")
        np.testing.assert_allclose(gi, want_gi, rtol=0, atol=1e-12, err_msg=f"{name} call {k}")
        for p, w in zip(m.parameters(), want_grads):
            np.testing.assert_allclose(p.grad, w, rtol=0, atol=1e-12, err_msg=f"{name} call {k}")
    if backend == "numba":  # (the whole-program kernels ran, their products np.dot calls)
        sources = [k.source for k in numba_program._programs.values()]
        assert sources and all("np.dot(" in src for src in sources), sources
