"""Loading the code location prints no `BetaWarning` (every run worker and code server loads it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _stderr_of(script: str) -> str:
    # A fresh interpreter showing every warning: pytest's own filters (pyproject.toml) do not apply.
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_loading_the_definitions_warns_about_nothing_beta() -> None:
    stderr = _stderr_of("from aivo_fl.definitions import discovered_definitions; discovered_definitions()")
    assert "BetaWarning" not in stderr, stderr
