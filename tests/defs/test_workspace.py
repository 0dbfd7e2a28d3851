"""`workspace.yaml` loads the project's Definitions the way `dagster dev` does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_dagster_definitions_validate_passes_on_the_workspace(tmp_path: Path) -> None:
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=tmp_path,  # the code location reads its settings (and `.env`) from here, not the working tree
        env={"DAGSTER_HOME": str(tmp_path), "PATH": str(dagster.parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr
