"""Learners, their interactions and their personalized models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from aivo_fl.config import DEFAULT_BASE_MODEL
from aivo_fl.ml.interactions import HEADS, ROW_PROBLEMS, add_counts, check_rows
from aivo_fl.ml.samples import NUM_FEATURES
from aivo_fl.registry.base import RegistryBase, checked_learner_id
from aivo_fl.registry.errors import RegistryError
from aivo_fl.registry.schema import (
    FederatedUpdateContribution,
    Learner,
    LearnerInteraction,
    ModelTrainingSession,
    PersonalizedModel,
    utcnow,
)

IN_CHUNK = 1_000  # ids per IN list: bounded on every backend


@dataclass(frozen=True)
class PersonalizedModelRecord:
    learner_id: str
    base_model: str
    status: str
    metadata: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class LearnerInteractions:
    """A learner's usable interactions (aivo_fl.ml.interactions checks every row), and how many
    rows were skipped for which reason."""

    features: np.ndarray  # (n, NUM_FEATURES) float32
    targets: dict[str, np.ndarray]  # head -> (n,) int64
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows


class Learners(RegistryBase):
    # -- learners and interactions: read from self.app (our own tables, or the app's) ----------
    def _require_own_tables(self) -> None:
        """Writing learners and interactions is the app's job; aivo-fl writes only its own demo tables."""
        if self.app.app_owned:
            raise RegistryError(
                f'Learners and interactions are the app\'s ("{self.app.learner.name}", "{self.app.interaction.name}"): '
                "aivo-fl only reads them; simulated learners need the demo's own tables (unset APP_LEARNER_TABLE)"
            )

    def add_learner(self, learner_id: str, *, baseline_completed_at: datetime | None) -> None:
        checked_learner_id(learner_id)
        self._require_own_tables()
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
        self._require_own_tables()
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
        """A learner's interactions in time order (id breaks ties): the held-out split is positional."""
        found = self.get_interactions_of([learner_id])
        if learner_id not in found:
            raise RegistryError(f"Unknown learner {learner_id}")
        return found[learner_id]

    def get_interactions_of(self, learner_ids: Sequence[str]) -> dict[str, LearnerInteractions]:
        """:meth:`get_interactions` of many learners, a query per IN_CHUNK of them. Unknown and
        deleted learners are left out: a deleted learner's interactions are never read again."""
        for learner_id in learner_ids:
            checked_learner_id(learner_id)
        learner, interaction = self.app.learner.c, self.app.interaction.c
        rows_of: dict[str, list[Any]] = {}
        with self._session() as session:
            for start in range(0, len(learner_ids), IN_CHUNK):
                chunk = list(learner_ids[start : start + IN_CHUNK])
                known = session.scalars(sa.select(learner.id).where(learner.id.in_(chunk), learner.deletedAt.is_(None)))
                rows_of.update({learner_id: [] for learner_id in known})
                rows = session.execute(
                    sa.select(
                        interaction.learnerId,
                        interaction.features,
                        *(interaction[head] for head in HEADS),
                        interaction.createdAt,
                    )
                    .where(interaction.learnerId.in_(chunk))
                    .order_by(interaction.learnerId, interaction.createdAt, interaction.id)
                )
                for row in rows:
                    if row[0] in rows_of:
                        rows_of[row[0]].append(row[1:])
        return {learner_id: _interactions(rows) for learner_id, rows in rows_of.items()}

    def count_unusable_interactions(self, chunk: int = 10_000) -> dict[str, int]:
        """The interaction rows of non-deleted learners that training skips, by reason (every
        reason of ROW_PROBLEMS, 0 when none): one streamed pass over the interaction table, no
        learner's own count kept."""
        learner, interaction = self.app.learner.c, self.app.interaction.c
        query = (
            sa.select(interaction.features, *(interaction[head] for head in HEADS), interaction.createdAt)
            .join(self.app.learner, learner.id == interaction.learnerId)
            .where(learner.deletedAt.is_(None))
            .execution_options(stream_results=True, yield_per=chunk)
        )
        totals = dict.fromkeys(ROW_PROBLEMS, 0)
        with self._session() as session:
            for rows in session.execute(query).partitions():
                add_counts(totals, check_rows(rows).skipped)
        return totals

    def learners_needing_model(self, *, after: str | None = None, limit: int = 10_000) -> list[str]:
        """Learners with a completed baseline, not deleted, and no federated personalized model, in
        id order. A "PersonalizedModel" row the app made before activation (no `federatedLearning`
        in its metadata) does not count: its learner is cloned and the row becomes the clone's.

        `after` is a keyset cursor (the last id handled) so a sensor can page without OFFSET.
        """
        learner = self.app.learner.c
        federated = sa.func.coalesce(PersonalizedModel.metadata_["federatedLearning"].as_boolean(), sa.false())
        query = (
            sa.select(learner.id)
            .outerjoin(PersonalizedModel, PersonalizedModel.learnerId == learner.id)
            .where(
                learner.baselineCompletedAt.is_not(None),
                learner.deletedAt.is_(None),
                sa.or_(PersonalizedModel.id.is_(None), ~federated),
            )
            .order_by(learner.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(learner.id > after)
        with self._session() as session:
            return list(session.scalars(query))

    def deleted_learner_ids(self) -> list[str]:
        """Learners deleted in the app that aivo-fl still holds data for: their rows in our own
        learner tables, or (app's tables, whose rows the app removes) a model, session or
        contribution here."""
        learner = self.app.learner.c
        query = sa.select(learner.id).where(learner.deletedAt.is_not(None)).order_by(learner.id)
        if self.app.app_owned:
            query = query.where(
                sa.or_(
                    *(
                        sa.select(column).where(column == learner.id).exists()
                        for column in (
                            PersonalizedModel.learnerId,
                            ModelTrainingSession.learnerId,
                            FederatedUpdateContribution.learnerId,
                        )
                    )
                )
            )
        with self._session() as session:
            return list(session.scalars(query))

    def learners_with_new_interactions(self, min_new: int) -> list[tuple[str, int, int]]:
        """(learner, new interactions, newest interaction marker) for learners with a model and at
        least `min_new` interactions since their last training session (all of them if never trained).

        The marker grows with new activity: the newest id in our own table (autoincrement), the
        newest `createdAt` in microseconds in the app's (whose ids, cuids or uuids, need not grow).
        """
        learner, interaction = self.app.learner.c, self.app.interaction.c
        newest = sa.func.max(interaction.createdAt if self.app.app_owned else interaction.id)
        last = (
            sa.select(ModelTrainingSession.learnerId, sa.func.max(ModelTrainingSession.completedAt).label("last"))
            .group_by(ModelTrainingSession.learnerId)
            .subquery()
        )
        query = (
            sa.select(interaction.learnerId, sa.func.count(), newest)
            .join(PersonalizedModel, PersonalizedModel.learnerId == interaction.learnerId)
            .join(self.app.learner, learner.id == interaction.learnerId)
            .outerjoin(last, last.c.learnerId == interaction.learnerId)
            .where(learner.deletedAt.is_(None), sa.or_(last.c.last.is_(None), interaction.createdAt > last.c.last))
            .group_by(interaction.learnerId)
            .having(sa.func.count() >= min_new)
            .order_by(interaction.learnerId)
        )
        with self._session() as session:
            return [(learner_id, int(count), _marker(mark)) for learner_id, count, mark in session.execute(query)]

    def count_learners(self) -> int:
        learner = self.app.learner.c
        with self._session() as session:
            return int(session.scalar(sa.select(sa.func.count(learner.id))) or 0)

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
            for start in range(0, len(ids), IN_CHUNK):
                chunk = ids[start : start + IN_CHUNK]
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
        return self.get_personalized_models([learner_id]).get(learner_id)

    def get_personalized_models(self, learner_ids: Sequence[str]) -> dict[str, PersonalizedModelRecord]:
        """The personalized models of those of these learners who have one."""
        for learner_id in learner_ids:
            checked_learner_id(learner_id)
        found = {}
        with self._session() as session:
            for start in range(0, len(learner_ids), IN_CHUNK):
                chunk = list(learner_ids[start : start + IN_CHUNK])
                rows = session.scalars(sa.select(PersonalizedModel).where(PersonalizedModel.learnerId.in_(chunk)))
                found.update({row.learnerId: _personalized_record(row) for row in rows})
        return found

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


def _interactions(rows: Sequence[Any]) -> LearnerInteractions:
    checked = check_rows(rows)  # the app's rows are untrusted: a bad one is skipped and counted
    return LearnerInteractions(features=checked.features, targets=checked.targets, skipped=checked.skipped)


def _marker(value: int | datetime) -> int:
    return round(value.timestamp() * 1e6) if isinstance(value, datetime) else int(value)
