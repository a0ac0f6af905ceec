"""CI runs exactly the README's test commands (.ci/run), the numba pass lists files that exist,
and the suite's file order for `--dist loadfile` (conftest.py: SLOW_FIRST, then by number of
tests) keeps each file's tests together and in order."""

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
