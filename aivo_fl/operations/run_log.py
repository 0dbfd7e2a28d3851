"""A progress report that is also appended to a log file (the activation guide's `logs/aggregation.log`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

Report = Callable[[str], None]


def appending_to(path: Path, report: Report, heading: str) -> Report:
    """`report`, plus each non-empty line appended to `path` with a UTC timestamp, after `heading`."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def to_file(line: str) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}\n")

    def both(line: str) -> None:
        report(line)
        if line:
            to_file(line)

    to_file(heading)
    return both
