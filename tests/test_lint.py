"""The code is linted and formatted by ruff (issue 17): `ruff check` and `ruff format --check`
over the package, the tests, the tools and the examples, with the pinned ruff of the `test`
extra. Run `ruff format tapernn tests tools examples` to fix formatting."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = ["tapernn", "tests", "tools", "examples"]


def _ruff() -> list[str]:
    exe = shutil.which("ruff")
    return [exe] if exe else [sys.executable, "-m", "ruff"]


def test_ruff_check_is_clean():
    done = subprocess.run(
        [*_ruff(), "check", *TREES], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_leaves_every_file_as_it_is():
    done = subprocess.run(
        [*_ruff(), "format", "--check", *TREES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
