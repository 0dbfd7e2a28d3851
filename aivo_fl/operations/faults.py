"""Fault injection for the crash-recovery tests (`tests/faults/`).

`AIVO_FL_TEST_KILL_AT=<text>` makes the process SIGKILL itself just before it reports a progress
line starting with <text>, e.g. "✓ Model saved to" (saved, not yet registered) or "Validation:"
(mid-round, lease and pool slot held). Unset, this costs one dictionary lookup per line.
"""

from __future__ import annotations

import os
import signal

KILL_AT_VARIABLE = "AIVO_FL_TEST_KILL_AT"


def crash_point(line: str) -> None:
    marker = os.environ.get(KILL_AT_VARIABLE)
    if marker and line.startswith(marker):
        os.kill(os.getpid(), signal.SIGKILL)
