"""Buffers (PyTorch's name): named non-parameter state a module estimated and trains on --
NCEModule's Z -- is in state_dict, saved by tn.save and restored by tn.load_into, checked like
the parameters; a file written before buffers existed still loads (the module keeps its value,
with a warning saying so)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.errors import NumericError, StateError


def _model(z=-1.0, seed=0):
    rng = np.random.default_rng(seed)
    lin = nn.Linear(4, 3)
    nce = nn.NCEModule(3, 7, 5, np.arange(1, 8), z=z, rng=rng)
    return lin, nce


def _estimate(lin, nce, seed=1):
    rng = np.random.default_rng(seed)
    x, ids = rng.standard_normal((6, 4)), rng.integers(0, 7, 6)
    nce.forward([lin.forward(x), ids])
    assert nce.z > 0  # estimated on this first training batch


def test_state_dict_holds_the_estimated_z_and_tn_save_keeps_it(tmp_path):
    lin, nce = _model()
    _estimate(lin, nce)
    state = nce.state_dict()
    assert set(state) == {"weight", "bias", "z"} and float(state["z"]) == nce.z
    tn.save(nce, tmp_path / "nce.npz")
    fresh = nn.NCEModule(3, 7, 5, np.arange(1, 8))
    assert fresh.z == -1.0
    tn.load_into(fresh, tmp_path / "nce.npz")
    assert fresh.z == nce.z  # (before: -1, Z estimated again on the next batch)
    np.testing.assert_array_equal(fresh.weight.data, nce.weight.data)


def test_a_nested_buffer_has_its_dotted_name_and_loads_back(tmp_path):
    _, nce = _model()
    model = nn.Sequential(nn.Linear(4, 3), nce)
    _estimate(nn.Linear(4, 3), nce)
    assert "1.z" in model.state_dict()
    tn.save(model, tmp_path / "m")
    other = nn.Sequential(nn.Linear(4, 3), nn.NCEModule(3, 7, 5, np.arange(1, 8)))
    tn.load_into(other, tmp_path / "m")
    assert list(other.modules())[2].z == nce.z


def test_a_file_written_before_buffers_loads_and_says_z_is_not_in_it(tmp_path):
    _, nce = _model()
    _estimate(nn.Linear(4, 3), nce)
    old = {k: v for k, v in nce.state_dict().items() if k != "z"}  # an older tn.save's file
    np.savez(tmp_path / "old.npz", **old)
    fresh = nn.NCEModule(3, 7, 5, np.arange(1, 8))
    with pytest.warns(UserWarning, match=r"'z'.*keeps"):
        tn.load_into(fresh, tmp_path / "old.npz")
    assert fresh.z == -1.0
    np.testing.assert_array_equal(fresh.weight.data, nce.weight.data)


def test_a_bad_z_loads_nothing():
    _, nce = _model()
    good = nce.state_dict()
    before = nce.weight.data.copy()
    state = dict(good, z=np.array(np.nan), weight=good["weight"] + 1)
    with pytest.raises(NumericError, match="'z'"):
        nce.load_state_dict(state)
    np.testing.assert_array_equal(nce.weight.data, before)
    with pytest.raises(StateError, match="'z'"):  # a buffer no module of this model holds
        nn.Linear(3, 7).load_state_dict(
            {"weight": good["weight"], "bias": good["bias"], "z": np.array(2.0)}
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nce.load_state_dict(dict(good, z=np.array(3.5, np.float32)))
    assert nce.z == 3.5 and isinstance(nce.z, float)


def test_a_loaded_model_trains_on_with_the_same_z(tmp_path):
    lin, nce = _model(seed=3)
    _estimate(lin, nce)
    tn.save(nce, tmp_path / "a")
    again = nn.NCEModule(3, 7, 5, np.arange(1, 8))
    tn.load_into(again, tmp_path / "a")
    nce.rng, again.rng = np.random.default_rng(9), np.random.default_rng(9)  # the same noise
    rng = np.random.default_rng(4)
    h, ids = rng.standard_normal((6, 3)), rng.integers(0, 7, 6)
    for a, b in zip(nce.forward([h, ids]), again.forward([h, ids])):
        np.testing.assert_array_equal(a, b)
