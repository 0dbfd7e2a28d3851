"""Which main version serves learners now, since when, from which round, and what it descends from.

Read from the registry (the active row, its ancestors by parent version, and the rounds that
produced them); the figures are server-held ones (the curriculum's validation split), so nothing
here depends on a learner's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aivo_fl.operations.learners import MainModelMissing
from aivo_fl.registry import MainVersionRecord, ModelRegistry


@dataclass(frozen=True)
class LineageStep:
    version: str
    active_from: datetime | None  # when it was promoted (None: never promoted)
    round_number: int | None  # the round that produced it; None for a version trained from the curriculum
    update_id: str | None
    curriculum_accuracy: float | None  # on the curriculum's validation split (server-held)

    @property
    def origin(self) -> str:
        return "trained on the curriculum" if self.round_number is None else f"round {self.round_number}"


@dataclass(frozen=True)
class ActiveVersion:
    lineage: list[LineageStep]  # oldest first; the last step is the active version
    rounds_recorded: int  # every round, promoted or rejected

    @property
    def active(self) -> LineageStep:
        return self.lineage[-1]


def active_version(registry: ModelRegistry) -> ActiveVersion:
    """The active version and its ancestors. Raises MainModelMissing when no version is active."""
    active = registry.get_active_version()
    if active is None:
        raise MainModelMissing()
    versions = {v.version: v for v in registry.list_main_versions()}
    rounds = registry.round_summaries()
    produced_by = {r.new_version: r for r in rounds if r.new_version is not None}
    chain: list[MainVersionRecord] = [active]
    while chain[-1].parent_version in versions and len(chain) <= len(versions):  # a cycle cannot loop
        chain.append(versions[chain[-1].parent_version])
    steps = []
    for record in reversed(chain):
        produced = produced_by.get(record.version)
        steps.append(
            LineageStep(
                version=record.version,
                active_from=record.promoted_at,
                round_number=produced.number if produced else None,
                update_id=produced.update_id if produced else None,
                curriculum_accuracy=record.metrics.get("validationAccuracy"),
            )
        )
    return ActiveVersion(steps, len(rounds))
