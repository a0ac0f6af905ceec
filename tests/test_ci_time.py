"""tools/ci_time.py: the per-file table of a ci_profile run and its groups of kernel modules
alike but for sizes (the modules, records and CPU seconds made up here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_tool

_TEXT = """from tapernn_k6_{loop} import kernel as loop0
def kernel(out0, dims, work_float{bits}):
    buf{buf} = c_view(work_float{bits}, 0, ({rows}, {width}))
    for i1 in range({width}):
        out0[i1] = {scale}.5 * buf{buf}[0, i1]
"""


@pytest.fixture
def tool():
    return load_tool("ci_time")


def _run(tmp_path, modules):
    """A profile (two workers) and a kernel cache: modules {name: (text, test, cpu)}."""
    prof, cache = tmp_path / "prof", tmp_path / "cache"
    prof.mkdir()
    cache.mkdir()
    lines = {"gw0": [], "gw1": []}
    for k, (name, (text, test, cpu)) in enumerate(modules.items()):
        (cache / f"{name}.py").write_text(text)
        event = {"kernel": f"{name}.kernel", "sig": "()", "s": cpu, "cpu": cpu, "kind": "compile"}
        load = dict(event, kind="load", cpu=0.1)
        record = {"test": test, "wall": 2 * cpu, "cpu": cpu + 0.5, "events": [event, load]}
        lines[f"gw{k % 2}"].append(json.dumps(record))
    for worker, recs in lines.items():
        (prof / f"{worker}.jsonl").write_text("\n".join(recs) + "\n")
    return str(prof), str(cache)


def test_groups_are_texts_alike_but_for_sizes_and_kernel_names(tool, tmp_path, capsys):
    def text(rows, width, loop="aa", bits=64, buf=1, scale=0):
        return _TEXT.format(rows=rows, width=width, loop=loop, bits=bits, buf=buf, scale=scale)

    prof, cache = _run(
        tmp_path,
        {
            "tapernn_k6_01": (text(2, 4), "tests/test_a.py::test_x", 3.0),
            "tapernn_k6_02": (text(3, 8, loop="bb"), "tests/test_b.py::test_y", 5.0),
            "tapernn_k6_03": (text(5, 6, loop="cc"), "tests/test_b.py::test_z", 2.0),
            "tapernn_k6_04": (text(2, 4, bits=32), "tests/test_a.py::test_f32", 3.5),  # a dtype
            "tapernn_k6_05": (text(2, 4, buf=2), "tests/test_c.py::test_w", 1.0),  # a name
            "tapernn_k6_06": (text(2, 4, scale=1), "tests/test_c.py::test_v", 1.0),  # a value
            # (callees in the cache: alike but for a size, or for a dtype)
            "tapernn_k6_07": (text(2, 4, loop="e1"), "tests/test_d.py::test_u", 1.0),
            "tapernn_k6_08": (text(3, 8, loop="e2"), "tests/test_d.py::test_u", 1.0),
            "tapernn_k6_09": (text(2, 4, loop="e3"), "tests/test_d.py::test_u", 1.0),
        },
    )
    for name, line in (("e1", "range(4)"), ("e2", "range(5)"), ("e3", "np.float32(1)")):
        Path(cache, f"tapernn_k6_{name}.py").write_text(f"x = {line}\n")
    recs = tool.records(prof)
    assert len(recs) == 9
    group, callees = tool.size_groups(recs, cache)
    saved, cpu, members = group
    assert (saved, cpu) == (5.0, 10.0)  # (one compile of 5 s instead of three)
    assert sorted(m for m, _, _ in members) == ["tapernn_k6_01", "tapernn_k6_02", "tapernn_k6_03"]
    assert sorted(m for m, _, _ in callees[2]) == ["tapernn_k6_07", "tapernn_k6_08"]
    rows = {row[0]: row[1:] for row in tool.per_file(recs)}
    assert rows["tests/test_b.py"] == (2, 14.0, 8.0, 7.0, 2)  # tests, wall, CPU, compile, count
    assert next(iter(rows)) == "tests/test_b.py"  # (most compile CPU first)
    tool.main([prof, "--groups", cache])
    out = capsys.readouterr().out
    assert "9 tests" in out and "9 compiles" in out
    assert "if shared: -6 s of compile CPU in 2 groups" in out
    assert "tests/test_b.py::test_y" in out


def test_a_module_missing_from_the_cache_is_left_out(tool, tmp_path):
    prof, cache = _run(
        tmp_path,
        {
            "tapernn_k6_01": (
                _TEXT.format(rows=2, width=4, loop="a", bits=64, buf=1, scale=0),
                "t::a",
                1.0,
            ),
            "tapernn_k6_02": (
                _TEXT.format(rows=3, width=4, loop="b", bits=64, buf=1, scale=0),
                "t::b",
                2.0,
            ),
        },
    )
    assert len(tool.size_groups(tool.records(prof), cache)) == 1
    Path(cache, "tapernn_k6_02.py").unlink()
    assert tool.size_groups(tool.records(prof), cache) == []
