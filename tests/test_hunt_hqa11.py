"""QA round hqa11: regression tests for what it found and for hqa10's leftovers (MuFuRu's tie
rule, the gradient of a variable exponent at base 0, nn.Abs of -0.0)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import tapernn as tn
from tapernn import functional as F
from tapernn import nn
from tapernn.nn.mufuru import OPERATIONS


def _grads(fn, *arrays):
    """fn's value and its gradient with respect to every array (one scalar output)."""
    g = tn.trace(lambda *vs: F.sum(fn(*vs)), *arrays)
    out = tn.Compiled(tn.grad(g, wrt=list(range(len(arrays)))))(*arrays)
    return out[0], out[1:]


# ---- MuFuRu's max / min: Torch7 builds them from nn.Max(1) / nn.Min(1) over {s, v} stacked ----
# (MuFuRu.lua: MapTable(Unsqueeze(1)) -> JoinTable(1) -> Max(1)); TH's max keeps the first of
# equal entries, so a tie's gradient goes all to the old state s, none to the feature v.


@pytest.mark.parametrize("op", ["max", "min"])
def test_mufuru_max_min_give_a_ties_gradient_to_the_old_state(op):
    s = np.array([[0.5, 0.2, 0.7], [0.3, 0.3, 0.9]])
    v = np.array([[0.5, 0.4, 0.1], [0.3, 0.1, 0.9]])
    value, (gs, gv) = _grads(OPERATIONS[op], s, v)
    pick = (np.greater_equal if op == "max" else np.less_equal)(s, v)  # first wins a tie
    assert value == pytest.approx(np.sum(np.where(pick, s, v)))
    np.testing.assert_array_equal(gs, pick.astype(float))
    np.testing.assert_array_equal(gv, 1.0 - pick)


@pytest.mark.parametrize("op", ["max", "min"])
def test_mufuru_max_min_keep_a_nan_from_either_side(op):
    s = np.array([np.nan, 0.5, 0.2])
    v = np.array([0.1, np.nan, 0.2])
    g = tn.trace(OPERATIONS[op], s, v)
    out = tn.Compiled(g)(s, v)
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == 0.2


def test_a_max_only_mufuru_steps_a_tie_into_the_old_states_gradient(backend):
    """A whole cell: zero weights make v = sigmoid(b) everywhere; a first state equal to it is
    an exact tie, and the state's gradient goes through the max op (weight 1: one op)."""
    H = 3
    cell = nn.MuFuRu(2, H, ["max"])
    for lin in (cell.reset_x, cell.reset_h, cell.feature, cell.op_weights):
        lin.weight.data[...] = 0.0
        lin.bias.data[...] = 0.0
    cell.feature.bias.data[...] = 0.25
    s0 = np.full((2, H), 1.0 / (1.0 + np.exp(-0.25)))
    seq = nn.Sequencer(cell)
    cell.set_initial_state((s0,))
    x = np.zeros((1, 2, 2))
    out = seq.forward(x)
    np.testing.assert_array_equal(out[0], s0)
    seq.backward(x, np.ones_like(out))
    (g0,) = cell.get_grad_initial_state()
    np.testing.assert_array_equal(g0, np.ones((2, H)))  # all to the old state, none to v


# ---- a variable exponent: torch's gradients at base 0 and exponent 0 ----


def test_power_gradients_match_torch_at_base_zero_and_exponent_zero():
    torch = pytest.importorskip("torch")
    a = np.array([0.0, 0.0, 0.0, 2.0, -1.0, 0.0, 0.0, -0.0, 3.0, 0.0])
    b = np.array([2.0, 0.5, 0.0, 1.5, 2.0, -1.0, 1.0, 3.0, 0.0, -0.5])
    value, (ga, gb) = _grads(lambda a, b: a**b, a, b)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (ta**tb).sum().backward()
    with np.errstate(divide="ignore", invalid="ignore"):
        assert np.array_equal(value, np.sum(a**b), equal_nan=True)
    np.testing.assert_array_equal(ga, ta.grad.numpy())
    np.testing.assert_array_equal(gb, tb.grad.numpy())
    assert not np.isnan(ga[[0, 1, 2, 5, 6, 7, 8, 9]]).any()
    assert not np.isnan(gb[[0, 1, 2, 6, 7, 8]]).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_power_gradient_at_base_zero_is_finite_in_a_cell_loss(backend, dtype):
    """relu(x) ** p with a learnt p: relu's zeros must not make p's gradient NaN."""
    x = np.array([[-1.0, 0.5, 2.0], [0.0, -3.0, 1.5]], dtype)
    p = np.array([2.0, 1.5, 3.0], dtype)
    _, (gx, gp) = _grads(lambda x, p: tn.relu(x) ** p, x, p)
    r = np.maximum(x.astype(np.float64), 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        want_p = np.sum(np.where(r > 0, r**p * np.log(np.where(r > 0, r, 1)), 0.0), 0)
    np.testing.assert_allclose(gp, want_p, rtol=1e-6)
    assert gx.dtype == gp.dtype == dtype


def test_power_gradients_agree_with_finite_differences_away_from_zero():
    rng = np.random.default_rng(3)
    tn.gradcheck(lambda a, b: a**b, rng.uniform(0.3, 2, (3, 4)), rng.normal(size=(3, 4)))
    tn.gradcheck(lambda a: a**3.0, rng.normal(size=(3, 4)))
    tn.gradcheck(lambda b: 2.0**b, rng.normal(size=(3, 4)))


# ---- nn.Abs: +0.0 at -0.0 (THNN's fabs), gradient +1 at 0 (THNN: z >= 0 ? g : -g) ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_abs_of_negative_zero_is_positive_zero(backend, dtype):
    x = np.array([-0.0, 0.0, -2.5, 3.0, -np.inf, np.inf, np.nan], dtype)
    m = nn.Abs().astype(dtype)
    y = m.forward(x)
    np.testing.assert_array_equal(y, np.abs(x))
    assert not np.signbit(y[:6]).any()
    assert y.dtype == dtype
    g = m.backward(x, np.ones_like(x))
    np.testing.assert_array_equal(g[:6], [1.0, 1.0, -1.0, 1.0, -1.0, 1.0])


# ---- tapernn train: every bad number refused by the argument parser, in one line ----


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--lr", "inf"], "argument --lr: must be positive and finite"),
        (["--clip", "inf"], "argument --clip: must be >= 0 and finite"),
        (["--temperature", "inf"], "argument --temperature: must be positive and finite"),
        (["--seed", "-1"], "argument --seed: must be >= 0"),
        (["--seed", "1.5"], "argument --seed: expected an integer"),
        (["--sample-len", "-1"], "argument --sample-len: must be >= 0"),
    ],
)
def test_train_refuses_non_finite_and_negative_numbers_before_reading_any_text(
    argv, expected, capsys, tmp_path
):
    from tapernn.apps.train import main

    missing = tmp_path / "not-read.txt"  # a parse error comes before the text is read
    assert main(["--text", str(missing), "--steps", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tapernn train: error:"), err
    assert expected in err, err


def test_train_checkpoint_path_that_is_a_file_says_so(capsys, tmp_path):
    from tapernn.apps.train import main

    (tmp_path / "ck").write_text("not a directory")
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    argv = ["--text", str(text), "--steps", "1", "--checkpoint", str(tmp_path / "ck")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file, not a directory" in err, err
    assert (tmp_path / "ck").read_text() == "not a directory"


# ---- CAddTable / CMulTable: Torch7 adds entries of one size; no silent broadcast ----


@pytest.mark.parametrize("cls", [nn.CAddTable, nn.CMulTable])
@pytest.mark.parametrize(
    "shapes", [((3, 1), (3,)), ((2, 3), (3,)), ((2, 3), (2, 3), (1, 3))], ids=str
)
def test_cadd_cmul_table_refuse_entries_of_different_shapes(cls, shapes):
    xs = [np.ones(s) for s in shapes]
    with pytest.raises(tn.ShapeError, match="one shape"):
        cls().forward(xs)


@pytest.mark.parametrize("cls, fn", [(nn.CAddTable, np.add), (nn.CMulTable, np.multiply)])
def test_cadd_cmul_table_of_same_shaped_entries_still_work(cls, fn):
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(2, 3)) for _ in range(3)]
    np.testing.assert_allclose(cls().forward(xs), fn(fn(xs[0], xs[1]), xs[2]), rtol=1e-15)


# ---- custom modules and criteria: a missing build or a non-scalar loss is a TapernnError ----


def test_a_custom_criterion_or_module_without_build_raises_a_build_error():
    class NoBuildCriterion(nn.Criterion):
        pass

    class NoBuildModule(nn.Module):
        pass

    with pytest.raises(tn.BuildError, match=r"NoBuildCriterion does not define build\(self, "):
        NoBuildCriterion().forward(np.ones(3), np.ones(3))
    with pytest.raises(tn.BuildError, match=r"NoBuildModule does not define build\(self, input"):
        NoBuildModule().forward(np.ones(3))
    assert issubclass(tn.BuildError, NotImplementedError)  # (what build raised before)


def test_a_custom_criterion_whose_loss_is_not_a_scalar_says_so():
    class SquaredError(nn.Criterion):
        def build(self, x, t):
            return (x - t) ** 2  # forgot tn.sum

    with pytest.raises(tn.BuildError, match=r"scalar .*got shape \(3,\)"):
        SquaredError().forward(np.ones(3), np.zeros(3))

    class SumSquaredError(nn.Criterion):
        def build(self, x, t):
            return tn.sum((x - t) ** 2)

    c = SumSquaredError()
    assert c.forward(np.ones(3), np.zeros(3)) == 3.0
    np.testing.assert_array_equal(c.backward(np.ones(3), np.zeros(3)), [2.0, 2.0, 2.0])


# ---- bad arguments raise a TapernnError subclass, not the bare base class ----


def test_bad_arguments_of_public_entry_points_raise_specific_errors():
    seq = nn.Sequencer(nn.LSTM(3, 4))
    with pytest.raises(tn.ArgumentTypeError, match="inputs are arrays or"):
        seq.forward({"x": np.ones((2, 1, 3))})
    with pytest.raises(tn.ArgumentError, match="set_blas_threads expects"):
        tn.set_blas_threads(0)
    with pytest.raises(tn.ArgumentError, match="expected one of"):
        tn.set_backend("cuda")

    class ReturnsFloat(nn.Module):
        def build(self, x):
            return 3.0

    with pytest.raises(tn.BuildError, match="returned float, not a Var"):
        ReturnsFloat().forward(np.ones(3))


@pytest.mark.parametrize(
    "kwargs", [{"level": "ops"}, {"cluster_by": "time"}, {"view": "reverse"}], ids=str
)
def test_diagram_options_outside_their_choices_raise_argument_errors(kwargs):
    from tapernn.export import to_dot

    g = tn.trace(lambda x: tn.tanh(x), np.ones(3))
    with pytest.raises(tn.ArgumentError, match="must be one of"):
        to_dot(g, **kwargs)


def test_compile_report_of_a_child_points_to_the_outermost_module():
    inner = nn.Sequencer(nn.LSTM(3, 4))
    model = nn.Sequential(inner, nn.Sequencer(nn.Linear(4, 2)))
    model.forward(np.ones((2, 1, 3)))
    assert "nn.Sequencer @ nn.LSTM(3 -> 4)" in str(model.compile_report())
    with pytest.raises(tn.StateError, match="ask the outermost one"):
        inner.compile_report()


# ---- generated numba kernels: the same source in every process (the cache is by digest) ----

_SOURCES = """
import hashlib, sys
import os

import numpy as np
import tapernn as tn
from tapernn import nn
from tapernn.backends import numba_loop

def record(self, key):  # the sources only: nothing compiled
    print(type(self).__name__, hashlib.sha1(self.source.encode()).hexdigest())
    return None

numba_loop.LoopKernel.prepare = record
tn.set_backend("numba")
for make in (lambda: nn.LSTM(3, 4), lambda: nn.GRU(3, 4)):
    s = nn.Sequencer(make())
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    for _ in range(3):
        y = s.forward(x)
        s.backward(x, np.ones_like(y))
"""


def test_generated_kernel_sources_do_not_depend_on_the_process_hash_seed(tmp_path):
    """A program kernel calling a loop kernel freed the call's buffers in a set's order: its
    workspace offsets, so its source and digest, changed with PYTHONHASHSEED -- every process
    compiled it again (~2 s) and the kernel cache grew by one file per process."""
    pytest.importorskip("numba")
    import subprocess
    import sys

    script = tmp_path / "sources.py"
    script.write_text(_SOURCES)
    runs = []
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "TAPERNN_NUMBA_BACKGROUND": "0"}
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(os.path.dirname(tn.__file__)), env.get("PYTHONPATH", "")]
        )
        out = subprocess.run(
            [sys.executable, str(script)],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(out.stdout.split())
    assert any(w == "ProgramKernel" for w in runs[0]), runs[0]  # the case is exercised
    assert runs[0] == runs[1] == runs[2]
