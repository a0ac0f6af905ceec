"""Bad input raises TapernnError subclasses naming the module path, step and expected vs actual."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


def test_wrong_input_size_names_module_path_and_step():
    model = nn.Sequential().add(nn.Sequencer(nn.LSTM(5, 4)))
    with pytest.raises(tn.ShapeError) as e:
        model.forward([np.ones((2, 7))] * 3)
    msg = str(e.value)
    assert "nn.LSTM(5 -> 4)" in msg and "'0.0'" in msg and "step 0" in msg
    assert "(batch, 5)" in msg and "(2, 7)" in msg


def test_linear_wrong_size():
    with pytest.raises(
        tn.ShapeError, match=r"expected input size 3 in the last dimension, got shape \(2, 4\)"
    ):
        nn.Linear(3, 2).forward(np.ones((2, 4)))


def test_mismatched_batch_sizes_in_a_list():
    seq = nn.Sequencer(nn.GRU(3, 4))
    with pytest.raises(tn.ShapeError, match=r"step 2 has shape \(5, 3\) but step 0 has \(2, 3\)"):
        seq.forward([np.ones((2, 3)), np.ones((2, 3)), np.ones((5, 3))])


def test_lookup_id_out_of_range():
    model = nn.Sequential().add(nn.LookupTable(10, 3)).add(nn.Linear(3, 2))
    with pytest.raises(tn.ValueRangeError) as e:
        model.forward(np.array([1, 10, 2]))
    assert "0 <= id < 10" in str(e.value) and "'0'" in str(e.value) and "embedding" in str(e.value)
    with pytest.raises(tn.ValueRangeError):
        model.forward(np.array([-1, 0, 2]))
    with pytest.raises(tn.DTypeError, match="integer ids"):
        model.forward(np.array([0.5, 1.0]))


def test_class_target_out_of_range():
    crit = nn.ClassNLLCriterion()
    with pytest.raises(
        tn.ValueRangeError, match=r"class target 5 out of range: expected 0 <= target < 5"
    ):
        crit.forward(np.zeros((2, 5)), np.array([0, 5]))
    seq_crit = nn.SequencerCriterion(nn.ClassNLLCriterion())
    with pytest.raises(tn.ValueRangeError):
        seq_crit.forward([np.zeros((2, 3))] * 2, [np.array([0, 1]), np.array([3, 0])])


def test_backward_before_forward():
    with pytest.raises(tn.StateError, match="backward called before forward"):
        nn.Sequencer(nn.LSTM(3, 3)).backward([np.ones(3)], [np.ones(3)])
    with pytest.raises(tn.StateError, match="backward called before forward"):
        nn.Linear(3, 3).backward(np.ones(3), np.ones(3))


def test_stepwise_backward_out_of_order():
    lstm = nn.LSTM(3, 3)
    xs = np.random.default_rng(0).standard_normal((3, 3))
    for x in xs:
        lstm.forward(x)
    with pytest.raises(tn.StateError, match="reverse order; expected the input of step 2"):
        lstm.backward(xs[0], np.ones(3))
    for t in (2, 1, 0):
        lstm.backward(xs[t], np.ones(3))
    with pytest.raises(tn.StateError, match="every step was already backwarded"):
        lstm.backward(xs[0], np.ones(3))


def test_grad_output_shape_mismatch():
    lin = nn.Linear(3, 2)
    lin.forward(np.ones((4, 3)))
    with pytest.raises(tn.ShapeError, match=r"grad_output 0 has shape \(4, 3\), expected \(4, 2\)"):
        lin.backward(np.ones((4, 3)), np.ones((4, 3)))


def test_nan_loss_is_a_numeric_error():
    with pytest.raises(tn.NumericError, match="NaN"):
        nn.MSECriterion().forward(np.array([np.nan, 1.0]), np.zeros(2))


def test_bce_rejects_non_probabilities():
    with pytest.raises(tn.ValueRangeError, match=r"probabilities in \[0, 1\]"):
        nn.BCECriterion().forward(np.array([1.5]), np.array([1.0]))


def test_remembered_state_with_new_batch_size():
    seq = nn.Sequencer(nn.LSTM(3, 3)).remember("both")
    seq.forward(np.ones((2, 4, 3)))
    with pytest.raises(tn.StateError, match="call forget"):
        seq.forward(np.ones((2, 5, 3)))
    seq.forget()
    assert seq.forward(np.ones((2, 5, 3))).shape == (2, 5, 3)


def test_errors_are_tapernn_errors_not_numpy_tracebacks():
    for exc in (tn.ShapeError, tn.StateError, tn.ValueRangeError, tn.NumericError, tn.DTypeError):
        assert issubclass(exc, tn.TapernnError)


def test_a_pass_list_of_names_is_refused_where_it_is_set():
    from tapernn import nn

    with pytest.raises(
        TypeError, match=r"pass 1 is 'fuse_gates' \(str\).*tapernn.passes.fuse_gates"
    ):
        nn.Linear(2, 2).set_passes([tn.passes.eliminate_dead_code, "fuse_gates"])
    with pytest.raises(TypeError, match="got str"):
        tn.set_default_passes("eliminate_dead_code")
    m = nn.Linear(2, 2).set_passes((tn.passes.eliminate_dead_code,))  # any iterable of passes
    assert m.forward(np.ones(2)).shape == (2,)
