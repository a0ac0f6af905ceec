"""Found by hqa6's QA hunt (each test failed before its fix)."""

from __future__ import annotations

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn


class _ListOfLayers(nn.Module):
    """A custom module holding its layers in a list (PyTorch's ModuleList trap)."""

    def __init__(self):
        super().__init__()
        self.layers = [nn.Linear(3, 4), nn.Linear(4, 2)]

    def build(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class _CellWithAListedLayer(nn.Cell):
    state_names = ("h",)

    def __init__(self):
        super().__init__(3, 4)
        self.parts = [nn.Linear(7, 4)]

    def step(self, x, h):
        return tn.tanh(self.parts[0](tn.concat([x, h], axis=-1)))


@pytest.mark.parametrize(
    "make, x",
    [
        (_ListOfLayers, np.ones((2, 3))),
        (lambda: nn.Sequencer(_CellWithAListedLayer()), np.ones((3, 2, 3))),
    ],
    ids=["module", "cell"],
)
def test_a_module_outside_the_model_tree_is_refused_by_name(make, x):
    # (before: it ran; backward filled the listed Linear's gradients, but parameters() was
    # empty, so zero_grad_parameters() never zeroed them (they grew call after call), the
    # optimizers never updated them and save() did not write them)
    m = make()
    with pytest.raises(
        tn.ArgumentError,
        match=r"nn\.Linear\(\d -> 4\)'s parameter 'weight'.*"
        r"not one of the model's modules.*add_child",
    ):
        m.forward(x)


def test_registered_layers_still_run():
    class Registered(_ListOfLayers):
        def __init__(self):
            super().__init__()
            for k, layer in enumerate(self.layers):
                self.add_child(f"layer{k}", layer)

    m = Registered()
    y = m.forward(np.ones((2, 3)))
    m.backward(np.ones((2, 3)), np.ones_like(y))
    assert len(m.parameters()) == 4 and all(np.any(p.grad) for p in m.parameters())


@pytest.mark.parametrize(
    "make",
    [
        lambda u: nn.BiSequencer(nn.GRU(3, 4), unroll=u),
        lambda u: nn.BiSequencerLM(nn.GRU(3, 4), unroll=u),
        lambda u: nn.Repeater(nn.GRU(3, 4), 5, unroll=u),
    ],
    ids=["BiSequencer", "BiSequencerLM", "Repeater"],
)
def test_unroll_is_an_argument_of_bisequencer_and_repeater(make):
    # (before: the README names `unroll` as their argument, as a Sequencer's, but the
    # constructors took none: a bare TypeError "unexpected keyword argument 'unroll'")
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    if "Repeater" in type(make(None)).__name__:
        x = x[0]
    results = {}
    for unroll in (True, False, None):
        tn.manual_seed(0)
        m = make(unroll)
        y = np.array(m.forward(x))
        notes = str(m.compile_report())
        if not isinstance(m, nn.BiSequencerLM):  # (which always traces its steps)
            assert ("unrolled" in notes) == (unroll is True), notes
        results[unroll] = y
    np.testing.assert_allclose(results[True], results[None], rtol=1e-12, atol=1e-14)
    with pytest.raises(tn.ArgumentTypeError, match="unroll"):
        make("yes")


def test_save_and_load_into_a_folder_say_it_is_a_folder(tmp_path):
    # (before: save(m, folder) wrote `folder.npz` beside the folder, save(m, "folder/") wrote a
    # hidden `folder/.npz`, and load_into(m, folder) said "no such file 'folder.npz'")
    m = nn.Linear(3, 2)
    for where in (tmp_path, str(tmp_path) + "/", str(tmp_path / "new") + "/"):
        with pytest.raises(tn.StateError, match=r"is a folder; give the parameters' file"):
            tn.save(m, where)
        with pytest.raises(tn.StateError, match=r"is a folder; give the parameters' file"):
            tn.load_into(m, where)
    assert sorted(
        p.name for p in tmp_path.parent.iterdir() if p.name.startswith(tmp_path.name)
    ) == [tmp_path.name]
    assert not list(tmp_path.iterdir())
    tn.save(m, tmp_path / "model")  # (a file name still gets .npz)
    assert tn.load_into(nn.Linear(3, 2), tmp_path / "model.npz") is not None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dz_in_gates": "no"},
        {"packed_gemm": 1},
        {"xs_in_slab": None},
        {"kernel_min_uses": 2.5},
        {"strided_min_run": -1},
        {"regions": "False"},
        {"backend": None},
    ],
    ids=str,
)
def test_plan_options_check_their_flags(kwargs):
    # (before: any truthy value switched a flag on, so dz_in_gates="no" or regions="False"
    # meant True; a float or negative threshold was taken as it was)
    with pytest.raises(tn.ArgumentTypeError, match=r"PlanOptions\.\w+ is "):
        tn.PlanOptions(**kwargs)
    options = tn.PlanOptions(dz_in_gates=np.bool_(False), kernel_min_uses=np.int64(3))
    assert not options.dz_in_gates and options.kernel_min_uses == 3


def test_set_plan_options_refuses_another_kind_by_name():
    # (before: a bare TypeError, not a TapernnError)
    with pytest.raises(tn.ArgumentTypeError, match=r"nn\.Linear\(2 -> 2\)\.set_plan_options takes"):
        nn.Linear(2, 2).set_plan_options({"backend": "numpy"})


def test_a_parameters_override_that_leaves_frozen_ones_out_still_runs():
    class Frozen(nn.Sequential):
        def parameters(self):  # the second layer is frozen: not handed to optimizers
            return self.get(0).parameters()

    m = Frozen(nn.Linear(3, 4), nn.Linear(4, 2))
    y = m.forward(np.ones((2, 3)))
    assert y.shape == (2, 2) and len(m.parameters()) == 2
