"""Golden DOT files for a 3-step functional LSTM; regenerate with `python tools/update_goldens.py`."""

from __future__ import annotations

import pytest
from golden_cases import CASES, golden_path


@pytest.mark.parametrize("name", sorted(CASES))
def test_dot_matches_golden_file(name):
    expected = golden_path(name).read_text()
    assert CASES[name]().source == expected, (
        f"{name}: DOT output changed; if intended, run `python tools/update_goldens.py` and "
        f"review the diff of tests/golden/{name}.dot"
    )


def test_dot_is_deterministic_across_builds():
    for draw in CASES.values():
        assert draw().source == draw().source
