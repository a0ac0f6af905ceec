"""Random-cell differential fuzzer (cells from tests/cell_fuzz.py): each case's Sequencer output
and gradients with the default passes and with none, against a NumPy evaluation of the same
random program, some with finite differences. TAPERNN_FUZZ_CASES=N runs N cases (default 200)
from seed TAPERNN_FUZZ_SEED (default 0); `python tools/fuzz_cells.py --cases 5000` runs many
and prints each failing cell as source, ready for tests/test_regressions_compiler.py."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from cell_fuzz import check_case, make_case, make_cell, numpy_outputs

import tapernn as tn
from tapernn import nn

CASES = int(os.environ.get("TAPERNN_FUZZ_CASES", "200"))
START = int(os.environ.get("TAPERNN_FUZZ_SEED", "0"))


@pytest.mark.parametrize("seed", range(START, START + CASES))
def test_random_cell(seed):
    case = make_case(seed)
    try:
        check_case(case)
    except BaseException:
        print(case.describe())  # the failing cell as source (pytest shows it with the failure)
        raise


NUMBA_CASES = int(os.environ.get("TAPERNN_FUZZ_NUMBA_CASES", "4"))


@pytest.mark.parametrize("seed", range(START, START + NUMBA_CASES))
def test_random_cell_on_the_numba_backend(seed):
    """The same cases with the fused groups lowered by numba (fewer by default: every new
    fused group and whole-program kernel is a cold numba compilation, 10-50 s per case with an
    empty kernel cache; TAPERNN_FUZZ_NUMBA_CASES=N runs more)."""
    from tapernn.backends import numba_available

    if not numba_available():
        pytest.skip("numba is not installed")
    before = tn.get_backend()
    tn.set_backend("numba")
    try:
        test_random_cell(seed)
    finally:
        tn.set_backend(before)


def test_the_cases_cover_what_the_fuzzer_promises():
    """Over the CI seeds: several states, gates cut by split and slice, a state returned twice
    and one passed through, stacked cells, 0-d reductions (and ops on them), recurrent
    matmuls, weights read by several matmuls (and transposed, as Linear), stack-sums of
    stack-sums, an `output` override, T from 1 to 5, batched and not, float32, FD checks."""
    seen: Counter = Counter()
    for seed in range(200):
        case = make_case(seed)
        seen[f"T={case.T}"] += 1
        seen["batched" if case.batch else "unbatched"] += 1
        seen[np.dtype(case.dtype).name] += 1
        seen["fd"] += case.fd
        seen["stacked"] += len(case.cells) > 1
        for cell in case.cells:
            n_in = 1 + cell.states
            seen["states>1"] += cell.states > 1
            seen["aliased"] += len(set(cell.returns)) < len(cell.returns)
            seen["passthrough"] += any(r == 1 + k for k, r in enumerate(cell.returns))
            ops = [op for op, _, _ in cell.code]
            seen.update(set(ops))
            seen["output override"] += cell.output != 0
            weights = [a["w"] for op, _, a in cell.code if op in ("matmul", "matmul_t")]
            seen["shared weight"] += len(set(weights)) < len(weights)
            seen["recurrent matmul"] += any(
                op == "matmul" and 1 <= args[0] < n_in for op, args, _ in cell.code
            )
            zero_d = {
                n_in + k
                for k, (op, _, _) in enumerate(cell.code)
                if op in ("rsum", "rmax", "rmean")
            }
            seen["op on 0-d"] += any(
                args and args[0] in zero_d and op not in ("mul", "add") for op, args, _ in cell.code
            )
            seen["stacksum of stacksum"] += any(
                op == "stacksum" and cell.code[args[0] - n_in][0] == "stacksum"
                for op, args, _ in cell.code
                if args[0] >= n_in
            )
    for feature in [
        "T=1",
        "T=5",
        "batched",
        "unbatched",
        "float32",
        "fd",
        "stacked",
        "states>1",
        "aliased",
        "passthrough",
        "split",
        "slice",
        "concat",
        "stacksum",
        "rsum",
        "rmax",
        "rmean",
        "rowsum",
        "sigmoid",
        "logsig",
        "recurrent matmul",
        "op on 0-d",
        "stacksum of stacksum",
        "matmul_t",
        "rsub",
        "output override",
        "shared weight",
    ]:
        assert seen[feature] >= 3, (feature, seen)


def test_the_printed_source_is_the_cell():
    """describe()'s source, executed, computes what the fuzzer ran (so a failure printed by the
    fuzzer can be pasted into a regression test as it is)."""
    for seed in range(12):
        case = make_case(seed)
        namespace = {"nn": nn, "tn": tn}
        for k, spec in enumerate(case.cells):
            exec(spec.source(f"FuzzCell{k}"), namespace)  # noqa: S102 (generated cell)
        cells = [namespace[f"FuzzCell{k}"](p) for k, p in enumerate(case.params)]
        m = nn.Sequencer(cells[0] if len(cells) == 1 else nn.Sequential(*cells))
        np.testing.assert_allclose(m.forward(case.x), numpy_outputs(case), rtol=1e-9, atol=1e-9)


def test_the_oracle_catches_a_wrong_op(monkeypatch):
    """A fuzzer must be able to fail: with tanh's forward off by 1e-6, cases using tanh
    disagree with NumPy."""
    import dataclasses

    from tapernn import backends
    from tapernn.ops import registry

    # (ufunc=None: the NumPy backend's code generator calls the op's forward, not np.tanh)
    wrong = dataclasses.replace(
        registry.REGISTRY["tanh"],
        ufunc=None,
        forward=lambda x, out=None: np.add(np.tanh(x), 1e-6, out=out),
    )
    monkeypatch.setitem(registry.REGISTRY, "tanh", wrong)
    monkeypatch.setattr(backends, "_chosen", "numpy")
    from cell_fuzz import pruned_case

    seed = next(
        s
        for s in range(50)
        if make_case(s).dtype == np.float64
        and any(op == "tanh" for c in pruned_case(make_case(s)).cells for op, _, _ in c.code)
    )
    with pytest.raises(AssertionError, match="vs NumPy"):
        check_case(make_case(seed))


def test_make_cell_is_a_plain_cell():
    case = make_case(3)
    cell = make_cell(case.cells[0], case.params[0])
    assert isinstance(cell, nn.Cell) and cell.state_names == tuple(
        f"s{k}" for k in range(case.cells[0].states)
    )


def test_pruning_keeps_what_the_states_read():
    """pruned() drops only instructions no state reads: same outputs, fewer instructions."""
    from cell_fuzz import pruned_case

    shrunk = 0
    for seed in range(20):
        case = make_case(seed)
        small = pruned_case(case)
        np.testing.assert_array_equal(numpy_outputs(small), numpy_outputs(case))
        shrunk += sum(len(a.code) < len(b.code) for a, b in zip(small.cells, case.cells))
    assert shrunk >= 5
