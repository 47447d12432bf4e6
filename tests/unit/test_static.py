"""The code base stays clean: ruff and mypy (with the zope plugin) pass."""

from __future__ import annotations

import subprocess
import sys

from harness import REPO

PACKAGES = ["herd", "storage", "config"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", *PACKAGES, "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = run("mypy", *PACKAGES)
    assert result.returncode == 0, result.stdout + result.stderr
