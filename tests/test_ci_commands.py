"""CI runs exactly the README's test commands (.ci/run), the numba pass lists files that exist,
and the suite's file order for `--dist loadfile` (conftest.py: SLOW_FIRST, then by number of
tests; the SHARED groups one work unit each) keeps each file's tests together and in order."""

from pathlib import Path
from types import SimpleNamespace

import conftest

ROOT = Path(__file__).resolve().parents[1]


def _pytest_commands(text: str) -> list[str]:
    """The `python -m pytest` commands of a shell text (continuations joined, `&&` split)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            if "python -m pytest" in part:
                commands.append(" ".join(part.split()))
    return commands


def _readme_bash_blocks() -> str:
    text = (ROOT / "README.md").read_text()
    return "\n".join(block.split("```")[0] for block in text.split("```bash")[1:])


def test_ci_runs_the_readme_test_commands():
    ci = _pytest_commands((ROOT / ".ci" / "run").read_text())
    readme = _pytest_commands(_readme_bash_blocks())
    assert ci and ci == readme, (ci, readme)
    for command in ci:
        for word in command.split():
            if word.startswith("tests/"):
                assert (ROOT / word).is_file(), word


def _item(path: str, name: str):
    return SimpleNamespace(path=Path(path), name=name)


def test_slow_files_go_first_then_by_number_of_tests_each_file_in_order(monkeypatch):
    monkeypatch.setattr(conftest, "SLOW_FIRST", ("test_slow.py", "test_slower_start.py"))
    items = [
        _item("tests/test_a.py", "a1"),
        _item("tests/test_b.py", "b1"),
        _item("tests/test_slower_start.py", "s1"),
        _item("tests/test_b.py", "b2"),
        _item("tests/test_slow.py", "w1"),
        _item("tests/test_slow.py", "w2"),
        _item("tests/test_b.py", "b3"),
    ]
    config = SimpleNamespace(workerinput={}, getoption=lambda name, default=None: "loadfile")
    conftest.pytest_collection_modifyitems(None, config, items)
    assert [i.name for i in items] == ["w1", "w2", "s1", "b1", "b2", "b3", "a1"]


def test_one_process_keeps_pytests_order():
    items = [_item("tests/test_b.py", "b1"), _item("tests/test_a.py", "a1")]
    config = SimpleNamespace(getoption=lambda name, default=None: "no")
    conftest.pytest_collection_modifyitems(None, config, items)
    assert [i.name for i in items] == ["b1", "a1"]


def test_shared_files_are_one_loadfile_work_unit_and_stand_together(monkeypatch):
    monkeypatch.setattr(conftest, "SLOW_FIRST", ("test_slow.py", "test_x.py", "test_y.py"))
    monkeypatch.setattr(conftest, "SHARED", (("test_y.py", "test_a.py", "test_x.py"),))
    scope = conftest.xdist_scope
    assert scope("tests/test_a.py::t[1]") == scope("tests/test_x.py::u") == "tests/test_y.py"
    assert scope("tests/test_y.py::v") == "tests/test_y.py"
    assert scope("tests/test_b.py::t") == "tests/test_b.py"
    assert scope("test_a.py::t") == "test_y.py"
    items = [
        _item("tests/test_a.py", "a1"),
        _item("tests/test_b.py", "b1"),
        _item("tests/test_x.py", "x1"),
        _item("tests/test_y.py", "y1"),
        _item("tests/test_slow.py", "w1"),
        _item("tests/test_a.py", "a2"),
    ]
    config = SimpleNamespace(workerinput={}, getoption=lambda name, default=None: "loadfile")
    conftest.pytest_collection_modifyitems(None, config, items)
    # (the group at its earliest file's rank, in the group's order)
    assert [i.name for i in items] == ["w1", "y1", "a1", "a2", "x1", "b1"]


def test_the_loadfile_scheduler_groups_the_shared_files():
    from xdist.scheduler import LoadFileScheduling

    config = SimpleNamespace(
        getvalue=lambda name: {"dist": "loadfile", "tx": ["popen"] * 2}.get(name),
        option=SimpleNamespace(loadscopereorder=False, numprocesses=2, maxprocesses=None, tx=[]),
    )
    try:
        sched = conftest.pytest_xdist_make_scheduler(config, None)
    except Exception as error:  # (xdist's constructor reads more of the config: the method)
        raise AssertionError(f"the scheduler could not be made: {error!r}") from error
    assert isinstance(sched, LoadFileScheduling)
    first, second = conftest.SHARED[0][:2]
    assert sched._split_scope(f"tests/{second}::t") == f"tests/{first}"
    assert sched._split_scope("tests/test_ci_commands.py::t") == "tests/test_ci_commands.py"
    other = SimpleNamespace(getvalue=lambda name: "load")
    assert conftest.pytest_xdist_make_scheduler(other, None) is None
