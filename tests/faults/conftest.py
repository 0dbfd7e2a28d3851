"""Fault injection: the real `aivo-fl` console script, SIGKILLed at a chosen progress line.

`AIVO_FL_TEST_KILL_AT=<text>` (aivo_fl/operations/faults.py) makes the process kill itself with
SIGKILL just before it reports a line starting with <text>: no cleanup handler runs, exactly
as with `kill -9` or a lost machine. Every command has a timeout, so a hang fails the test.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import RunCli, in_a_subprocess
from tests.defs.conftest import deployment  # noqa: F401  (a real Dagster instance, for the sensor's faults)

SMALL = {"TRAINING_EPOCHS": "3", "CURRICULUM_SAMPLES": "500", "USE_FEDERATED_LEARNING": "true"}
# Bound on any single command here: a run waiting for a lock or a slot fails the test instead.
TIMEOUT = 240


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    """Here `aivo-fl` is always a process of its own: it is what gets killed."""
    return in_a_subprocess(tmp_path)


def killed_at(cli: RunCli, marker: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = cli(*args, env={**env, "AIVO_FL_TEST_KILL_AT": marker}, timeout=TIMEOUT)
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    return result
