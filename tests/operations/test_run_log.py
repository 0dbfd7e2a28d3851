"""appending_to: every non-empty progress line reaches both the operator and the log file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from aivo_fl.operations.run_log import appending_to


def test_lines_go_to_the_report_and_are_appended_with_timestamps(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "nested" / "aggregation.log"  # parent folders created on demand
    shown: list[str] = []
    report = appending_to(log, shown.append, "=== Round 1 ===")
    for line in ["Gathering updates", "", "Promoted 1.1.0"]:
        report(line)

    assert shown == ["Gathering updates", "", "Promoted 1.1.0"]
    written = log.read_text(encoding="utf-8").splitlines()
    assert [line.split(" ", 1)[1] for line in written] == ["=== Round 1 ===", "Gathering updates", "Promoted 1.1.0"]
    for line in written:
        assert datetime.fromisoformat(line.split(" ", 1)[0]).tzinfo is not None


def test_a_second_run_appends_rather_than_overwrites(tmp_path: Path) -> None:
    log = tmp_path / "aggregation.log"
    appending_to(log, lambda _: None, "first")("one")
    appending_to(log, lambda _: None, "second")("two")
    assert [line.split(" ", 1)[1] for line in log.read_text().splitlines()] == ["first", "one", "second", "two"]
