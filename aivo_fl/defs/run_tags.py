"""Run tags an operator reads in the runs list: what a run is, over which range, how it ended.

Dagster stores a run's tags sorted by key, and its runs table shows every user tag in that order
(the `dagster/` ones are hidden there). The keys are chosen for that order: what a run is and what
it covered sit under `aivo/`; the command line's process tags sit under `aivo_cli/`, which sorts
after every `aivo/` key, so they never crowd the first row.
"""

from __future__ import annotations

from enum import StrEnum

RUN_TAG = "aivo/run"  # what the run is: a RunKind
BUCKETS_TAG = "aivo/buckets"  # the learner buckets a cloning or training run covers
OUTCOME_TAG = "aivo/outcome"  # how a round ended (promoted, rejected, dry_run, or why it was refused)
VERSIONS_TAG = "aivo/versions"  # a round's base version and what became of it
TRIGGER_TAG = "aivo/trigger"  # what launched a round (schedule, cli, demo; the UI when absent)


class RunKind(StrEnum):
    MAIN_MODEL = "main-model"
    CLONING = "cloning"
    TRAINING = "training"
    ROUND = "round"
    ERASURE = "erasure"


def bucket_range(start: str, end: str) -> str:
    """`bucket-0003..bucket-0047`, or one bucket's key."""
    return start if start == end else f"{start}..{end}"


def round_versions(base_version: str, new_version: str | None) -> str:
    """`1.3.0 -> 1.4.0` for a promoted round, `1.3.0 kept` otherwise."""
    return f"{base_version} -> {new_version}" if new_version else f"{base_version} kept"
