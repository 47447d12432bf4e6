"""The CLI entry point as users see it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_help_describes_herd() -> None:
    result = subprocess.run([sys.executable, "-m", "herd", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0
    assert "An application server herd" in result.stdout and "``" not in result.stdout
