"""Learners' local training sessions and which of them a round may aggregate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from aivo_fl.ml.round.status import RoundStatus
from aivo_fl.registry.base import RegistryBase, checked_learner_id
from aivo_fl.registry.schema import (
    FederatedUpdate,
    FederatedUpdateContribution,
    ModelTrainingSession,
    utcnow,
)


@dataclass(frozen=True)
class EligibleLearner:
    """A learner's latest training session inside the aggregation window."""

    learner_id: str
    session_id: int
    source_version: str
    samples: int
    delta_path: str
    delta_norm: float
    improvement: float
    completed_at: datetime


@dataclass(frozen=True)
class TrainingSessionInput:
    learner_id: str
    source_version: str
    rebased_from: str | None
    samples: int
    epochs: int
    loss_before: float
    accuracy_before: float
    loss_after: float
    accuracy_after: float
    delta_norm: float
    delta_path: str
    started_at: datetime
    completed_at: datetime


class TrainingSessions(RegistryBase):
    def record_training_session(self, record: TrainingSessionInput) -> int:
        return self.record_training_sessions([record])[0]

    def record_training_sessions(self, records: Sequence[TrainingSessionInput]) -> list[int]:
        """Record many sessions in one transaction; their ids, in order."""
        for record in records:
            checked_learner_id(record.learner_id)
        # Field names map one to one: snake_case here, Prisma's camelCase in the table.
        rows = [ModelTrainingSession(**{_camel(name): value for name, value in asdict(r).items()}) for r in records]
        with self._session() as session:
            session.add_all(rows)
            session.flush()
            return [row.id for row in rows]

    def get_eligible_for_aggregation(self, days: int, *, now: datetime | None = None) -> list[EligibleLearner]:
        """What the next round would be offered: each non-deleted learner's latest training session
        completed within `days` days, unless a promoted round already aggregated it."""
        query = (
            _latest_in_window(self.app.learner, days, now)
            .where(~_already_aggregated())
            .order_by(ModelTrainingSession.learnerId)
        )
        with self._session() as session:
            return [
                EligibleLearner(
                    learner_id=row.learnerId,
                    session_id=row.id,
                    source_version=row.sourceVersion,
                    samples=row.samples,
                    delta_path=row.deltaPath,
                    delta_norm=row.deltaNorm,
                    improvement=row.accuracyAfter - row.accuracyBefore,
                    completed_at=row.completedAt,
                )
                for row in session.scalars(query)
            ]

    def count_already_aggregated(self, days: int, *, now: datetime | None = None) -> int:
        """Learners whose latest session in the window already went into a promoted version."""
        query = sa.select(sa.func.count()).select_from(
            _latest_in_window(self.app.learner, days, now).where(_already_aggregated()).subquery()
        )
        with self._session() as session:
            return int(session.scalar(query) or 0)


def _latest_in_window(learner: sa.Table, days: int, now: datetime | None) -> sa.Select[tuple[ModelTrainingSession]]:
    cutoff = (now or utcnow()) - timedelta(days=days)
    latest = (
        sa.select(ModelTrainingSession.learnerId, sa.func.max(ModelTrainingSession.id).label("session_id"))
        .where(ModelTrainingSession.completedAt >= cutoff)
        .group_by(ModelTrainingSession.learnerId)
        .subquery()
    )
    return (
        sa.select(ModelTrainingSession)
        .join(latest, latest.c.session_id == ModelTrainingSession.id)
        .join(learner, learner.c.id == ModelTrainingSession.learnerId, isouter=True)
        .where(learner.c.deletedAt.is_(None))
    )


def _already_aggregated() -> sa.Exists:
    """The session's delta went into a promoted version (a delta is never counted twice)."""
    return (
        sa.select(FederatedUpdateContribution.id)
        .join(FederatedUpdate, FederatedUpdate.id == FederatedUpdateContribution.federatedUpdateId)
        .where(
            FederatedUpdateContribution.trainingSessionId == ModelTrainingSession.id,
            FederatedUpdateContribution.excludedReason.is_(None),
            FederatedUpdate.status == RoundStatus.PROMOTED,
        )
        .exists()
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
