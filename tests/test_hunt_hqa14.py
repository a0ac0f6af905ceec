"""QA round hqa14: a parameter's dtype through `.data` / `.grad` rebinding, and what the hunt
found (fuzzers, stacked recurrences, criterions, tables, save/load, CLI)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn, optim
from tapernn.errors import DTypeError, ShapeError


@pytest.mark.parametrize("field", ["data", "grad"])
@pytest.mark.parametrize("model_dtype, other", [(np.float64, np.float32), (np.float32, np.float64)])
def test_rebinding_to_another_dtype_is_refused(field, model_dtype, other):
    """Before: accepted, and the model ran in mixed precision (a float32 weight in a float64 LSTM
    moved its outputs by 3e-9, silently; a float64 grad in a float32 model stayed float64)."""
    m = nn.Sequencer(nn.LSTM(3, 4)).astype(model_dtype)
    p = m.parameters()[0]
    kept = getattr(p, field)
    with pytest.raises(DTypeError, match=rf"is float\d\d; cannot rebind its \.{field} to a"):
        setattr(p, field, getattr(p, field).astype(other))
    assert getattr(p, field) is kept and p.dtype == model_dtype
    same = getattr(p, field).astype(model_dtype, copy=True)
    setattr(p, field, same)  # the same dtype: rebinding works as before
    assert getattr(p, field) is same


def test_assigning_into_casts_and_astype_converts_both(backend):
    """`p.data[...] = w32` casts (Torch7's :copy); Module.astype converts data and grad
    together, both ways, and the outputs follow (float64 again after .double())."""
    rng = np.random.default_rng(1)
    m = nn.Sequencer(nn.GRU(3, 4))
    x = rng.standard_normal((4, 2, 3))
    y64 = np.array(m.forward(x))
    for p in m.parameters():
        p.data[...] = p.data.astype(np.float32)
        assert p.data.dtype == np.float64
    m.float()
    assert all(p.data.dtype == p.grad.dtype == np.float32 for p in m.parameters())
    y32 = np.array(m.forward(x.astype(np.float32)))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=1e-5)
    m.double()
    assert all(p.data.dtype == p.grad.dtype == np.float64 for p in m.parameters())
    y = np.array(m.forward(x))
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, y64, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ignored", [False, True])
def test_class_nll_negative_class_weights_divide_by_their_sum(dtype, ignored):
    """Torch7's THNN (and PyTorch) divide by the targets' total weight whatever its sign. Before:
    the total was clamped to >= 1e-30, so a negative total gave a loss of -1.1e30, silently."""
    rng = np.random.default_rng(2)
    w = np.array([1.0, -2.0, 0.5, 3.0])
    x = np.log(rng.dirichlet(np.ones(4), 5))
    t = np.array([1, 1, 0, 2, 1])
    if ignored:
        t[3] = -100
    keep = t != -100
    tw = w[t[keep]].sum()
    assert tw < 0
    want = -np.sum(w[t[keep]] * x[np.flatnonzero(keep), t[keep]]) / tw
    want_grad = np.zeros_like(x)
    want_grad[np.flatnonzero(keep), t[keep]] = -w[t[keep]] / tw
    crit = nn.ClassNLLCriterion(w).astype(dtype)
    loss = crit.forward(x.astype(dtype), t)
    grad = np.array(crit.backward(x.astype(dtype), t))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert abs(loss - want) <= tol * abs(want)
    assert grad.dtype == dtype
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol)
    seq = nn.SequencerCriterion(nn.ClassNLLCriterion(w), size_average=True).astype(dtype)
    xs = np.stack([x, x[::-1]]).astype(dtype)
    ts = np.stack([t, t[::-1]])
    assert abs(seq.forward(xs, ts) - want) <= tol * abs(want)


def test_class_nll_all_masked_rows_give_zero():
    """MaskZeroCriterion over ClassNLL with every row masked: loss 0, gradient 0 (Element-RNN)."""
    crit = nn.MaskZeroCriterion(nn.ClassNLLCriterion(np.array([1.0, 2.0, 3.0])))
    x = np.zeros((2, 3))
    assert crit.forward(x, np.array([0, 1])) == 0
    assert not np.array(crit.backward(x, np.array([0, 1]))).any()


def test_class_nll_float_targets_are_a_dtype_error():
    """Was ShapeError 'targets must be integer class ids' for a dtype problem."""
    x = np.log(np.full((2, 3), 1 / 3))
    with pytest.raises(DTypeError, match=r"integer class ids \(0-based\), got float64"):
        nn.ClassNLLCriterion().forward(x, np.array([0.0, 1.0]))


def test_bce_weights_of_the_wrong_length_are_named():
    """Was "ShapeError mul: shapes (2, 2), (3,) do not broadcast" from inside the graph."""
    x, y = np.full((2, 2), 0.3), np.ones((2, 2))
    with pytest.raises(ShapeError, match=r"BCECriterion: 3 weights for inputs of shape \(2, 2\)"):
        nn.BCECriterion(np.array([1.0, 2.0, 3.0])).forward(x, y)
    w = np.array([1.0, 2.0])
    want = -np.sum(w * np.log(0.3)) * 2 / 4
    assert abs(nn.BCECriterion(w).forward(x, y) - want) < 1e-9


ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
# a block that is a template for the reader's own data: the names it leaves to the reader
TEMPLATE_NAMES = {
    "docs/scaling.md": lambda rng: {
        "vocab_size": 11,
        "B": 5,
        "batches": [(rng.integers(0, 11, (6, 5)), rng.integers(0, 11, (6, 5))) for _ in range(2)],
    }
}


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


@pytest.mark.parametrize("doc", DOCS)
def test_every_python_block_of_the_docs_runs(doc, tmp_path, monkeypatch):
    """Each ```python block of README.md and docs/*.md runs as written, in order (a file's blocks
    share one namespace, as a reader pastes them). Before: three README blocks used x, g, h0,
    xs, W, U of another block's shapes or never defined (ShapeError, NameError), and
    docs/torch7_classes.md's block had no import of nn."""
    from tapernn import blas

    text = (ROOT / doc).read_text()
    monkeypatch.chdir(tmp_path)  # (blocks may write files: diagrams, checkpoints)
    monkeypatch.setattr(blas, "_policy", blas._policy)  # (a block may set the thread count)
    namespace = {"__name__": "__doc_block__"}
    if doc in TEMPLATE_NAMES:
        namespace.update(TEMPLATE_NAMES[doc](np.random.default_rng(0)))
    for block in _python_blocks(text):
        line = text[: text.index(block)].count("\n") + 1
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block, f"{doc}:{line}", "exec"), namespace)  # noqa: S102


def test_readme_scan_block_computes_the_recurrence():
    """The block's `ys` are the recurrence it states (NumPy, step by step)."""
    block = next(b for b in _python_blocks((ROOT / "README.md").read_text()) if "tn.scan(" in b)
    ns: dict = {"np": np, "tn": tn}
    exec(block, ns)  # noqa: S102
    h, want = ns["h0"], []
    for x in ns["xs"]:
        h = np.tanh(x @ ns["W"] + h @ ns["U"])
        want.append(h)
    np.testing.assert_allclose(ns["ys"], np.stack(want), rtol=1e-12, atol=1e-12)


def _readme_block(marker: str) -> str:
    (found,) = [b for b in _python_blocks((ROOT / "README.md").read_text()) if marker in b]
    return found


def test_every_readme_block_has_its_result_checked():
    """(hux) Each README block's stated result is checked by a test here: a new block gets one."""
    markers = ("class MGU", "compile_report())", 'layout="feature"', "tn.scan(", "set_blas_threads")
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert sorted(next(m for m in markers if m in b) for b in blocks) == sorted(markers)


def test_readme_custom_cell_block_computes_the_minimal_gated_unit():
    """(hux) "A custom cell in 20 lines": y is (5, 2, 8), the MGU's equations in NumPy, and the
    backward fills every parameter's .grad."""
    ns: dict = {}
    exec(_readme_block("class MGU"), ns)  # noqa: S102
    x, y, cell = ns["x"], ns["y"], ns["seq"].get(0)
    assert y.shape == (5, 2, 8)
    p = {k: getattr(cell, k).data for k in ("w_f", "b_f", "w_h", "b_h")}
    h, want = np.zeros((2, 8)), []
    for t in range(5):
        f = 1 / (1 + np.exp(-(np.concatenate([x[t], h], -1) @ p["w_f"] + p["b_f"])))
        g = np.tanh(np.concatenate([x[t], f * h], -1) @ p["w_h"] + p["b_h"])
        h = (1 - f) * h + f * g
        want.append(h)
    np.testing.assert_allclose(y, np.stack(want), rtol=0, atol=1e-12)
    assert all(np.abs(q.grad).sum() > 0 for q in cell.parameters())


def test_readme_compiler_block_prints_what_its_comments_say(capsys):
    """(hux) The report's per-pass rows (nodes before/after, ms) and the generated forward program
    (the block's render_passes line is run by test_every_python_block_of_the_docs_runs)."""
    block = _readme_block("compile_report())")
    kept = [line for line in block.splitlines() if "render_passes" not in line]
    assert len(kept) == len(block.splitlines()) - 1
    ns: dict = {"np": np, "tn": tn, "nn": nn}
    exec("\n".join(kept), ns)  # noqa: S102
    report, source = capsys.readouterr().out.split("def ", 1)
    assert "nodes before" in report and "nodes after" in report and " ms" in report
    assert "return" in source and ns["seq"]._passes == []


def test_readme_layout_block_gives_the_note_it_shows():
    """(hux) The block's last expression is followed by its value as a comment: they agree."""
    *lines, expr, shown = _readme_block('layout="feature"').rstrip("\n").splitlines()
    assert shown.startswith("# ")
    ns: dict = {"np": np, "tn": tn, "nn": nn}
    exec("\n".join(lines), ns)  # noqa: S102
    assert eval(expr, ns) == eval(shown[2:])


def test_readme_reproducible_runs_block_fixes_layout_and_threads(monkeypatch):
    from tapernn import blas

    monkeypatch.setattr(blas, "_policy", blas._policy)
    ns: dict = {"np": np, "tn": tn, "nn": nn}
    exec(_readme_block("set_blas_threads"), ns)  # noqa: S102
    assert blas._policy == 2 and ns["seq"]._plan_options.layout == "batch"


def test_examples_diagrams_creates_its_output_folder(tmp_path):
    """`python examples/diagrams.py` from a fresh checkout failed with RenderError "folder
    'diagrams' does not exist" since tn.render stopped creating folders (hqa13): the example
    says it writes into ./diagrams/, so it makes that folder itself."""
    out = tmp_path / "new" / "diagrams"
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "diagrams.py"), str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    written = sorted(p.name for p in out.iterdir())
    assert "lstm_module_forward.svg" in written or "lstm_module_forward.dot" in written
    assert all((out / name).stat().st_size > 0 for name in written)


def test_charlm_bad_cell_and_layers_are_named():
    """CharLM (docs/scaling.md's Python use) given a cell name raised "TypeError: issubclass()
    arg 1 must be a class"; layers=0 built a model whose decoder met the embedding's size."""
    from tapernn.apps.charlm import CellSpecError, CharLM
    from tapernn.errors import ArgumentError, TapernnError

    with pytest.raises(CellSpecError, match=r"cell must be a tapernn module class.*got 'lstm'"):
        CharLM(5, "lstm", layers=1, embed=4, hidden=8)
    with pytest.raises(ArgumentError, match="layers must be an integer >= 1, got 0"):
        CharLM(5, nn.FastLSTM, layers=0, embed=4, hidden=8)
    assert issubclass(CellSpecError, TapernnError)


def test_corpus_errors_are_tapernn_errors_and_the_cache_leaves_no_temporary(tmp_path):
    """CorpusError was a bare Exception; the docstring cache's writer left its mkstemp file
    behind when interrupted (Ctrl-C while writing)."""
    from tapernn.apps.data import corpus
    from tapernn.errors import TapernnError

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(TapernnError, match="is empty"):
        corpus.read_text_file(empty)

    class Interrupted(str):
        def encode(self, *args, **kwargs):
            raise KeyboardInterrupt

    cache = tmp_path / "cache" / "docstrings.txt"
    with pytest.raises(KeyboardInterrupt):
        corpus._write_cache(cache, Interrupted("text"))
    assert list(cache.parent.iterdir()) == []
    corpus._write_cache(cache, "d\u00e9j\u00e0 vu")
    assert cache.read_text(encoding="utf-8") == "d\u00e9j\u00e0 vu"
    assert [p.name for p in cache.parent.iterdir()] == ["docstrings.txt"]


def test_a_read_only_grad_is_refused_when_rebound():
    """Was accepted, then backward failed with numpy's bare "ValueError: assignment destination
    is read-only". A read-only .data stays allowed (inference from a memory-mapped file)."""
    from tapernn.errors import ArgumentError

    m = nn.Sequencer(nn.LSTM(3, 4))
    p = m.parameters()[0]
    frozen = np.zeros(p.shape)
    frozen.flags.writeable = False
    with pytest.raises(ArgumentError, match="must be a writeable array"):
        p.grad = frozen
    p.data = frozen.copy()
    p.data.flags.writeable = False
    x = np.ones((2, 2, 3))
    y = m.forward(x)
    m.backward(x, np.ones_like(y))
    assert p.grad.any() and not p.data.any()


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=1.0),
        lambda ps: optim.Adam(ps, lr=1.0),
        lambda ps: optim.clip_grad_norm(ps, 1.0),
    ],
)
def test_a_parameter_listed_twice_is_refused(make):
    """Was accepted: SGD stepped it twice (a weight of 1 with gradient 1 and lr 1 became -1, not
    0), clip_grad_norm counted it twice in the norm and scaled its gradient twice. PyTorch
    warns ("duplicate parameters; in future, this will cause an error")."""
    from tapernn.errors import ArgumentError

    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    shared = a.parameters() + b.parameters() + [a.weight]  # (e.g. a tied embedding)
    with pytest.raises(ArgumentError, match=r"params\[4\] \('weight'\) is params\[0\] again"):
        make(shared)
    make(list(dict.fromkeys(shared)))  # the remedy the message gives


def test_grad_and_trace_name_their_bad_arguments():
    """tn.grad(3) raised AttributeError "'int' object has no attribute 'inputs'"; tn.trace with
    a ragged example list raised numpy's bare ValueError ("inhomogeneous shape")."""
    from tapernn.errors import ArgumentTypeError

    with pytest.raises(ArgumentTypeError, match=r"tn.grad takes a Graph .*got int"):
        tn.grad(3)
    with pytest.raises(ArgumentTypeError, match="trace it first"):
        tn.grad(lambda x: x * x)
    with pytest.raises(ShapeError, match="example array 1 is ragged"):
        tn.trace(lambda a, b: a + b, np.ones(2), [np.ones(2), np.ones(3)])


def test_join_table_names_its_bad_inputs():
    """Were errors of the concat op: "axis 3 out of range for 3-d input" and "concat: concat
    along axis 0: shapes ... differ off that axis", without the module that was given them."""
    x = np.ones((2, 3, 4))
    with pytest.raises(ShapeError, match=r"JoinTable\(3\).*dimension 3 out of range"):
        nn.JoinTable(3).forward([x, x])
    with pytest.raises(ShapeError, match=r"JoinTable\(0\).*agree on every dimension but 0"):
        nn.JoinTable(0).forward([x, x[:, :2]])
    j = nn.JoinTable(-1)
    y = j.forward([x, 2 * x])
    np.testing.assert_array_equal(y, np.concatenate([x, 2 * x], axis=-1))


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1), lambda ps: optim.Adam(ps)])
def test_a_step_refuses_a_read_only_data_before_changing_any(make):
    """A read-only .data (allowed for inference) made step() fail with numpy's bare ValueError
    halfway: the parameters listed before it were already stepped (lead, stop 36)."""
    from tapernn.errors import ArgumentError

    m = nn.Sequencer(nn.LSTM(3, 4))
    x = np.ones((2, 2, 3))
    m.backward(x, np.ones_like(m.forward(x)))
    params = m.parameters()
    opt = make(params)
    before = [p.data.copy() for p in params]
    params[-1].data = params[-1].data.copy()
    params[-1].data.flags.writeable = False
    with pytest.raises(ArgumentError, match=r"params\[\d+\].*read-only \.data"):
        opt.step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)
    params[-1].data = params[-1].data.copy()  # (writeable again: the step runs and changes all)
    opt.step()
    assert all(not np.array_equal(p.data, b) for p, b in zip(params, before))
