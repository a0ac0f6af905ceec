"""QA round hqa13: loading state (module and optimizer state dicts: dtype kind, NaN/Inf, shape,
float32 <-> float64, no half-loaded model), rendering folders, and what the hunt found."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.errors import (
    ArgumentError,
    DTypeError,
    NumericError,
    RenderError,
    ShapeError,
    StateError,
)


def _state(m, fill):
    return {k: fill(v) for k, v in m.state_dict().items()}


@pytest.mark.parametrize(
    "fill, error",
    [
        (lambda v: np.full_like(v, np.nan), NumericError),
        (lambda v: np.where(v > 0, np.inf, v), NumericError),
        (lambda v: np.ones(v.shape, np.int64), DTypeError),
        (lambda v: np.ones(v.shape, bool), DTypeError),
        (lambda v: v.astype(complex), DTypeError),
        (lambda v: v.astype(object), DTypeError),
        (lambda v: np.full(v.shape, "a"), DTypeError),
        (lambda v: v[..., :1], ShapeError),
    ],
)
def test_load_state_dict_refuses_what_would_corrupt_the_model(fill, error):
    """Failed before hqa13: NaN, Inf, int, bool, complex and object arrays were copied in
    silently (complex dropping its imaginary part), strings raised a bare ValueError."""
    m = nn.Sequencer(nn.LSTM(3, 4))
    before = m.state_dict()
    with pytest.raises(error, match="load_state_dict"):
        m.load_state_dict(_state(m, fill))
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_a_bad_array_late_in_the_state_loads_none_of_it():
    """Failed before hqa13: the parameters before the bad one were already overwritten."""
    m = nn.Sequential().add(nn.Linear(3, 4)).add(nn.Linear(4, 2))
    before = m.state_dict()
    state = _state(m, lambda v: v + 1.0)
    state["1.bias"] = np.zeros(3)
    with pytest.raises(ShapeError, match=r"'1.bias': expected shape \(2,\), got \(3,\)"):
        m.load_state_dict(state)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_float32_and_float64_states_load_into_either_model_keeping_its_dtype():
    m64 = nn.GRU(3, 4)
    m32 = nn.GRU(3, 4).astype(np.float32)
    m32.load_state_dict(m64.state_dict())
    for k, v in m32.state_dict().items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, m64.state_dict()[k].astype(np.float32))
    back = nn.GRU(3, 4).load_state_dict(m32.state_dict())
    for k, v in back.state_dict().items():
        assert v.dtype == np.float64
        np.testing.assert_array_equal(v, m32.state_dict()[k].astype(np.float64))


def test_float64_values_beyond_float32_range_are_refused_by_a_float32_model():
    """Failed before hqa13: 1e300 became inf in the float32 model (with a RuntimeWarning)."""
    m32 = nn.Linear(3, 2).astype(np.float32)
    state = _state(m32, lambda v: v.astype(np.float64))
    state["weight"][0, 0] = 1e300
    with pytest.raises(NumericError, match="beyond float32's range"):
        m32.load_state_dict(state)
    assert np.isfinite(m32.weight.data).all()


def test_load_into_still_names_the_file_and_refuses_ints(tmp_path):
    m = nn.Linear(3, 2)
    np.savez(tmp_path / "ints.npz", weight=np.ones((2, 3), np.int32), bias=np.ones(2, np.int32))
    with pytest.raises(DTypeError, match="ints.npz"):
        tn.load_into(m, tmp_path / "ints.npz")


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: tn.optim.SGD(ps, 0.1, momentum=0.9),
        lambda ps: tn.optim.Adam(ps),
    ],
)
def test_optimizer_state_is_checked_before_any_is_loaded(make):
    """Failed before hqa13: a (1,)-shaped buffer was broadcast over the momentum silently, ints
    were cast, a missing buffer raised a bare KeyError."""
    m = nn.Linear(3, 2)
    opt = make(m.parameters())
    good = {k: v.copy() for k, v in opt.state_dict().items()}
    bcast = {k: (v if k == "t" else np.ones(1)) for k, v in good.items()}
    with pytest.raises(ShapeError, match=r"expected shape \(2, 3\), got \(1,\)"):
        opt.load_state_dict(bcast)
    ints = {k: (v if k == "t" else np.ones(v.shape, int)) for k, v in good.items()}
    with pytest.raises(DTypeError):
        opt.load_state_dict(ints)
    with pytest.raises(StateError, match="missing"):
        opt.load_state_dict({})
    nan = {k: (v if k == "t" else np.full(v.shape, np.nan)) for k, v in good.items()}
    with pytest.raises(NumericError):
        opt.load_state_dict(nan)
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(v, good[k])
    twin = make(nn.Linear(3, 2).parameters())
    twin.load_state_dict({k: v + 0.5 if k != "t" else v + 3 for k, v in good.items()})
    for k, v in twin.state_dict().items():
        np.testing.assert_array_equal(v, good[k] + (3 if k == "t" else 0.5))


def test_adam_step_count_must_be_a_non_negative_integer():
    opt = tn.optim.Adam(nn.Linear(3, 2).parameters())
    with pytest.raises(ArgumentError, match="'t' must be the step count"):
        opt.load_state_dict({**opt.state_dict(), "t": np.array(1.5)})


# ---- issue 2: one rule for a diagram's folder ----------------------------------------------------


def _traced():
    seq = nn.Sequencer(nn.RNN(2, 3))
    seq.forward(np.ones((2, 1, 2)))
    return seq


def test_render_refuses_a_missing_folder_as_the_cli_does(tmp_path, capsys):
    """Failed before hqa13: tn.render created tmp/missing/deeper/ (a mistyped folder put the
    diagram where nobody looks) while `tapernn graph -o` refused the same path."""
    from tapernn.apps.cli import main

    target = tmp_path / "missing" / "deeper" / "g.dot"
    with pytest.raises(RenderError, match=r"folder .*deeper' does not exist"):
        tn.render(_traced(), target)
    assert main(["graph", "-o", str(target)]) == 2
    assert "deeper' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()
    assert tn.render(_traced(), tmp_path / "g.DOT").read_text().startswith("digraph")
    assert main(["graph", "-o", str(tmp_path / "g.GV")]) == 0  # (was refused: .gv, case)
    assert (tmp_path / "g.GV").read_text().startswith("digraph")


def test_render_passes_creates_its_folder(tmp_path):
    paths = tn.render_passes(_traced(), tmp_path / "new" / "passes", fmt="dot")
    assert paths and all(p.parent == tmp_path / "new" / "passes" and p.is_file() for p in paths)


def test_demo_checks_its_diagram_path_before_running_the_tutorial(tmp_path, capsys):
    """Failed before hqa13: `tapernn demo --diagram x.jpeg` ran the whole tutorial, then failed
    (and a missing folder was created)."""
    from tapernn.apps.cli import main

    for bad in (tmp_path / "x.jpeg", tmp_path / "nope" / "x.svg", tmp_path):
        assert main(["demo", "--diagram", str(bad)]) == 2
        out, err = capsys.readouterr()
        assert "tutorial" not in out.lower() and "demo: error" in err
    assert not (tmp_path / "nope").exists()


# ---- constants in a float32 model ---------------------------------------------------------------


class _ConstCell(nn.Cell):
    """A cell mixing in NumPy constants: a float64 array, a 0-d array and a NumPy integer."""

    state_names = ("h",)

    def __init__(self):
        super().__init__(3, 3)
        self.w = self.parameter("w", (3, 3))

    def step(self, x, h):
        mask = np.array([1.0, -2.0, 0.5])
        return tn.tanh(x @ self.w) * mask + h * np.array(0.5) + np.int64(2) * x


def _const_cell_numpy(w, x):
    h, ys = np.zeros(x.shape[1:]), []
    for t in range(len(x)):
        h = np.tanh(x[t] @ w) * np.array([1.0, -2.0, 0.5]) + h * 0.5 + 2 * x[t]
        ys.append(h)
    return np.stack(ys)


@pytest.mark.parametrize("unroll", [False, True])
def test_numpy_constants_in_a_float32_cell_stay_float32(backend, unroll):
    """Failed before hqa13: the float32 model's output was float64 (unrolled) or its backward
    raised "a scan's residuals are float64" (rolled): float64 array constants and NumPy integer
    scalars promoted the step, where Python scalars already took the model's dtype."""
    tn.manual_seed(4)
    seq = nn.Sequencer(_ConstCell(), unroll=unroll).float()
    w = seq.get(0).w.data.astype(np.float64)
    x = np.random.default_rng(4).standard_normal((4, 2, 3))
    for _ in range(3):
        seq.zero_grad_parameters()
        y = seq.forward(x.astype(np.float32))
        gx = seq.backward(x.astype(np.float32), np.ones_like(y))
        assert y.dtype == gx.dtype == seq.get(0).w.grad.dtype == np.float32
        np.testing.assert_allclose(y, _const_cell_numpy(w, x), rtol=1e-5, atol=1e-5)


def test_outside_a_module_numpy_promotion_still_holds():
    g = tn.trace(lambda x: x * np.array([1.0, 2.0]), np.ones(2, np.float32))
    assert g.outputs[0].dtype == np.float64


# ---- odd custom cells ----------------------------------------------------------------------------


def _cell(step, states=("h",), output=None):
    body = {"state_names": states, "step": step}
    if output is not None:
        body["output"] = output

    def __init__(self):
        nn.Cell.__init__(self, 3, 3)
        self.w = self.parameter("w", (3, 3))

    body["__init__"] = __init__
    return type("OddCell", (nn.Cell,), body)()


@pytest.mark.parametrize("stepwise", [False, True])
def test_a_state_that_changes_dtype_is_refused(stepwise):
    """Failed before hqa13: a step returning `h > 0` made a bool state and a bool output."""
    cell = _cell(lambda self, x, h: x @ self.w + h > 0)
    with pytest.raises(DTypeError, match=r"state 'h' changed dtype float64 -> bool"):
        if stepwise:
            cell.forward(np.ones((2, 3)))
        else:
            nn.Sequencer(cell).forward(np.ones((2, 2, 3)))


def test_a_step_may_return_its_states_as_a_list():
    """Failed before hqa13: a list of two states was "1 states, state_names has 2"."""
    cell = _cell(lambda self, x, h, c: [tn.tanh(x @ self.w + c), c + h], states=("h", "c"))
    x = np.random.default_rng(2).standard_normal((3, 2, 3))
    w, h, c, want = cell.w.data, np.zeros((2, 3)), np.zeros((2, 3)), []
    for t in range(3):
        h, c = np.tanh(x[t] @ w + c), c + h
        want.append(h)
    np.testing.assert_allclose(nn.Sequencer(cell).forward(x), np.stack(want), rtol=1e-12)


def test_an_output_that_is_not_a_var_names_output():
    """Before hqa13: 'build returned int' (step-wise) or 'the module returned a table (list)'."""
    cell = _cell(lambda self, x, h: h + x @ self.w, output=lambda self, h: 3)
    for run in (
        lambda: cell.forward(np.ones((2, 3))),
        lambda: nn.Sequencer(cell)(np.ones((2, 2, 3))),
    ):
        with pytest.raises(ShapeError, match=r"output\(\) returned int where a tn.Var"):
            run()
