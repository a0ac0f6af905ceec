"""Regenerate the golden DOT files in tests/golden/ (the only way they should change).

Usage: python tools/update_goldens.py [--check]   (--check: report differences, write nothing)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from golden_cases import CASES, GOLDEN_DIR, golden_path


def main(argv: list[str]) -> int:
    check = "--check" in argv
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    changed = 0
    for name, draw in CASES.items():
        path = golden_path(name)
        text = draw().source
        old = path.read_text() if path.exists() else None
        if old == text:
            print(f"unchanged  {path.relative_to(ROOT)}")
            continue
        changed += 1
        print(f"{'differs' if check else 'wrote'}    {path.relative_to(ROOT)}")
        if not check:
            path.write_text(text)
    return 1 if check and changed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
