"""Learners, their interactions and their personalized models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from aivo_fl.config import DEFAULT_BASE_MODEL
from aivo_fl.ml.data import HEAD_CLASSES, NUM_FEATURES
from aivo_fl.registry.base import RegistryBase, RegistryError, checked_learner_id
from aivo_fl.registry.schema import (
    Learner,
    LearnerInteraction,
    ModelTrainingSession,
    PersonalizedModel,
    utcnow,
)

HEADS = tuple(HEAD_CLASSES)  # one SmallInteger column per head in "LearnerInteraction"


@dataclass(frozen=True)
class PersonalizedModelRecord:
    learner_id: str
    base_model: str
    status: str
    metadata: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class LearnerInteractions:
    features: np.ndarray  # (n, NUM_FEATURES) float32
    targets: dict[str, np.ndarray]  # head -> (n,) int64


class Learners(RegistryBase):
    def add_learner(self, learner_id: str, *, baseline_completed_at: datetime | None) -> None:
        checked_learner_id(learner_id)
        with self._session() as session:
            session.merge(Learner(id=learner_id, baselineCompletedAt=baseline_completed_at, deletedAt=None))

    def add_interactions(
        self,
        learner_id: str,
        features: np.ndarray,
        targets: dict[str, np.ndarray],
        *,
        created_at: datetime | None = None,
    ) -> int:
        checked_learner_id(learner_id)
        if features.ndim != 2 or features.shape[1] != NUM_FEATURES:
            raise RegistryError(f"interactions need shape (n, {NUM_FEATURES}), got {features.shape}")
        # Packed little-endian float32s: 1 KiB a row instead of a 256-column table or a JSON array.
        packed = np.ascontiguousarray(features, dtype="<f4")
        when = created_at or utcnow()
        rows = [
            {"learnerId": learner_id, "features": packed[i].tobytes(), "createdAt": when}
            | {head: int(targets[head][i]) for head in HEADS}
            for i in range(packed.shape[0])
        ]
        with self._session() as session:
            if session.get(Learner, learner_id) is None:
                raise RegistryError(f"Unknown learner {learner_id}")
            if rows:
                session.execute(sa.insert(LearnerInteraction), rows)
        return len(rows)

    def get_interactions(self, learner_id: str) -> LearnerInteractions:
        checked_learner_id(learner_id)
        columns = [getattr(LearnerInteraction, head) for head in HEADS]
        with self._session() as session:
            if session.get(Learner, learner_id) is None:
                raise RegistryError(f"Unknown learner {learner_id}")
            rows = session.execute(
                sa.select(LearnerInteraction.features, *columns)
                .where(LearnerInteraction.learnerId == learner_id)
                .order_by(LearnerInteraction.id)
            ).all()
        features = np.frombuffer(b"".join(r[0] for r in rows), dtype="<f4").reshape(len(rows), NUM_FEATURES)
        targets = {head: np.array([r[i + 1] for r in rows], dtype=np.int64) for i, head in enumerate(HEADS)}
        return LearnerInteractions(features=features.astype(np.float32), targets=targets)

    def learners_needing_model(self, *, after: str | None = None, limit: int = 10_000) -> list[str]:
        """Learners with a completed baseline, not deleted, and no personalized model, in id order.

        `after` is a keyset cursor (the last id handled) so a sensor can page without OFFSET.
        """
        query = (
            sa.select(Learner.id)
            .outerjoin(PersonalizedModel, PersonalizedModel.learnerId == Learner.id)
            .where(
                Learner.baselineCompletedAt.is_not(None),
                Learner.deletedAt.is_(None),
                PersonalizedModel.id.is_(None),
            )
            .order_by(Learner.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(Learner.id > after)
        with self._session() as session:
            return list(session.scalars(query))

    def deleted_learner_ids(self) -> list[str]:
        with self._session() as session:
            return list(
                session.scalars(sa.select(Learner.id).where(Learner.deletedAt.is_not(None)).order_by(Learner.id))
            )

    def learners_with_new_interactions(self, min_new: int) -> list[tuple[str, int, int]]:
        """(learner, new interactions, newest interaction id) for learners with a model and at least
        `min_new` interactions since their last training session (all of them if never trained)."""
        last = (
            sa.select(ModelTrainingSession.learnerId, sa.func.max(ModelTrainingSession.completedAt).label("last"))
            .group_by(ModelTrainingSession.learnerId)
            .subquery()
        )
        query = (
            sa.select(LearnerInteraction.learnerId, sa.func.count(), sa.func.max(LearnerInteraction.id))
            .join(PersonalizedModel, PersonalizedModel.learnerId == LearnerInteraction.learnerId)
            .join(Learner, Learner.id == LearnerInteraction.learnerId)
            .outerjoin(last, last.c.learnerId == LearnerInteraction.learnerId)
            .where(
                Learner.deletedAt.is_(None), sa.or_(last.c.last.is_(None), LearnerInteraction.createdAt > last.c.last)
            )
            .group_by(LearnerInteraction.learnerId)
            .having(sa.func.count() >= min_new)
            .order_by(LearnerInteraction.learnerId)
        )
        with self._session() as session:
            return [(learner, int(count), int(newest)) for learner, count, newest in session.execute(query)]

    def count_learners(self) -> int:
        with self._session() as session:
            return int(session.scalar(sa.select(sa.func.count(Learner.id))) or 0)

    # -- personalized models ----------------------------------------------------------------
    def register_personalized_model(
        self, learner_id: str, metadata: dict[str, Any], *, base_model: str = DEFAULT_BASE_MODEL
    ) -> PersonalizedModelRecord:
        self.register_personalized_models({learner_id: metadata}, base_model=base_model)
        record = self.get_personalized_model(learner_id)
        assert record is not None  # just written in its own committed transaction
        return record

    def register_personalized_models(
        self, models: Mapping[str, dict[str, Any]], *, base_model: str = DEFAULT_BASE_MODEL
    ) -> None:
        """Register (or refresh and reactivate) many learners' personalized models in one transaction."""
        for learner_id in models:
            checked_learner_id(learner_id)
        with self._session() as session:
            ids = list(models)
            for start in range(0, len(ids), 1_000):  # bounded IN lists on every backend
                chunk = ids[start : start + 1_000]
                existing = session.scalars(sa.select(PersonalizedModel).where(PersonalizedModel.learnerId.in_(chunk)))
                rows = {row.learnerId: row for row in existing}
                for learner_id in chunk:
                    row, metadata = rows.get(learner_id), models[learner_id]
                    if row is None:
                        session.add(PersonalizedModel(learnerId=learner_id, baseModel=base_model, metadata_=metadata))
                    else:
                        row.metadata_ = metadata
                        row.status = "ACTIVE"

    def get_personalized_model(self, learner_id: str) -> PersonalizedModelRecord | None:
        checked_learner_id(learner_id)
        with self._session() as session:
            row = session.scalar(sa.select(PersonalizedModel).where(PersonalizedModel.learnerId == learner_id))
            return _personalized_record(row) if row else None

    def delete_personalized_model(self, learner_id: str) -> bool:
        checked_learner_id(learner_id)
        with self._session() as session:
            result = session.execute(sa.delete(PersonalizedModel).where(PersonalizedModel.learnerId == learner_id))
            return bool(result.rowcount)


def _personalized_record(row: PersonalizedModel) -> PersonalizedModelRecord:
    return PersonalizedModelRecord(
        learner_id=row.learnerId,
        base_model=row.baseModel,
        status=row.status,
        metadata=dict(row.metadata_ or {}),
        created_at=row.createdAt,
    )
