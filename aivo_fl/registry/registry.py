"""`ModelRegistry`: every read and write of the registry database, and nothing else.

No Dagster here; the Dagster resource and the CLI both wrap this class. Methods return plain
dataclasses or dicts so callers never hold ORM objects past a session.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from aivo_fl.config import DEFAULT_BASE_MODEL
from aivo_fl.registry.database import create_registry_engine, current_revision, head_revision, unavailable
from aivo_fl.registry.schema import (
    AggregationLock,
    FederatedUpdate,
    FederatedUpdateContribution,
    Learner,
    LearnerInteraction,
    MainModelVersion,
    ModelTrainingSession,
    ModelVersionStatus,
    PersonalizedModel,
    utcnow,
)

NUM_FEATURES = 256  # the main model's input width; interactions are stored as packed float32s


class RegistryError(Exception):
    """A registry operation was refused; the message says why."""


class PromotionConflict(RegistryError):
    """Another promotion changed the active version first."""


class AggregationInProgress(RegistryError):
    """Another aggregation round holds the lease."""


@dataclass(frozen=True)
class MainVersionRecord:
    version: str
    status: ModelVersionStatus
    model_path: str
    parent_version: str | None
    metrics: dict[str, Any]
    created_at: datetime
    promoted_at: datetime | None


@dataclass(frozen=True)
class PersonalizedModelRecord:
    learner_id: str
    base_model: str
    status: str
    metadata: dict[str, Any]
    created_at: datetime


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


@dataclass(frozen=True)
class ContributionInput:
    learner_id: str
    weight: float
    update_norm: float | None
    clipped: bool
    excluded_reason: str | None
    training_session_id: int | None = None


@dataclass(frozen=True)
class FederatedUpdateInput:
    base_version: str
    new_version: str | None
    status: str  # PROMOTED or REJECTED
    strategy: str
    learning_rate: float
    contributions: Sequence[ContributionInput]
    performance_improvement: float | None
    accuracy_before: float | None
    accuracy_after: float | None
    dp_enabled: bool
    noise_multiplier: float | None
    clip_norm: float | None
    sample_rate: float | None
    epsilon_round: float | None
    epsilon_total: float | None
    privacy_delta: float | None
    rejection_reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    aggregated_at: datetime | None = None
    # Where the candidate's weights were written (promoted rounds) and what it scored.
    new_version_path: str | None = None
    new_version_metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedNoise:
    """The noise of one recorded round: what the privacy accountant recomposes."""

    noise_multiplier: float
    sample_rate: float


@dataclass(frozen=True)
class LearnerInteractions:
    features: np.ndarray  # (n, 256) float32
    targets: dict[str, np.ndarray]  # head -> (n,) int64


class ModelRegistry:
    """The registry of main versions, learners, personalized models, sessions and updates."""

    def __init__(self, database_url: str, engine: Engine | None = None) -> None:
        self.engine = engine or create_registry_engine(database_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _session(self) -> Iterator[Session]:
        """One transaction; commits on success. Connection failures become DatabaseUnavailable."""
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            if _is_connection_error(exc):
                raise unavailable(self.engine.url, exc) from None
            raise

    def check_connection(self) -> None:
        with self._session() as session:
            session.execute(sa.text("SELECT 1"))

    def require_current_schema(self) -> None:
        """Refuse to work on a database that `aivo-fl migrate` has not brought to head."""
        try:
            current = current_revision(self.engine)
        except OperationalError as exc:
            raise unavailable(self.engine.url, exc) from None
        head = head_revision()
        if current != head:
            raise RegistryError(
                f"The registry schema is at revision {current or 'none'}, expected {head}: run `aivo-fl migrate`"
            )

    def dispose(self) -> None:
        self.engine.dispose()

    # -- main model versions -------------------------------------------------------------
    def register_main_version(
        self,
        version: str,
        model_path: str,
        metrics: dict[str, Any],
        *,
        parent_version: str | None = None,
        activate: bool = True,
    ) -> MainVersionRecord:
        """Record a new main version; with `activate`, promote it in the same transaction."""
        with self._session() as session:
            if session.scalar(sa.select(MainModelVersion.id).where(MainModelVersion.version == version)):
                raise RegistryError(f"Main model version {version} is already registered")
            row = MainModelVersion(
                version=version,
                status=ModelVersionStatus.CANDIDATE,
                modelPath=model_path,
                parentVersion=parent_version,
                metrics=metrics,
            )
            session.add(row)
            session.flush()
            if activate:
                self._promote(session, row, expected_active=parent_version)
            return _main_record(row)

    def promote(self, version: str, *, expected_active: str | None) -> MainVersionRecord:
        """Make `version` active and deprecate the current active one, atomically.

        `expected_active` is the version the caller built on: if another promotion got there
        first, this one loses with PromotionConflict instead of silently overwriting it.
        """
        with self._session() as session:
            row = session.scalar(sa.select(MainModelVersion).where(MainModelVersion.version == version))
            if row is None:
                raise RegistryError(f"Unknown main model version {version}")
            self._promote(session, row, expected_active=expected_active)
            return _main_record(row)

    def _promote(self, session: Session, row: MainModelVersion, *, expected_active: str | None) -> None:
        # Row lock on the current active version: a racing promotion waits here, then sees it changed.
        current = session.scalar(
            sa.select(MainModelVersion).where(MainModelVersion.status == ModelVersionStatus.ACTIVE).with_for_update()
        )
        current_version = current.version if current else None
        if current_version != expected_active:
            raise PromotionConflict(
                f"Active main version is {current_version or 'none'}, expected {expected_active or 'none'}; "
                f"version {row.version} was not promoted"
            )
        now = utcnow()
        if current is not None:
            current.status = ModelVersionStatus.DEPRECATED
            current.deprecatedAt = now
            session.flush()
        row.status = ModelVersionStatus.ACTIVE
        row.promotedAt = now
        try:
            session.flush()
        except IntegrityError as exc:  # the single-active index: someone else won the race
            raise PromotionConflict(f"Version {row.version} lost a concurrent promotion") from exc

    def reject_version(self, version: str, reason: str) -> None:
        with self._session() as session:
            row = session.scalar(sa.select(MainModelVersion).where(MainModelVersion.version == version))
            if row is None:
                raise RegistryError(f"Unknown main model version {version}")
            row.status = ModelVersionStatus.REJECTED
            row.metrics = {**row.metrics, "rejectionReason": reason}

    def get_active_version(self) -> MainVersionRecord | None:
        with self._session() as session:
            row = session.scalar(
                sa.select(MainModelVersion).where(MainModelVersion.status == ModelVersionStatus.ACTIVE)
            )
            return _main_record(row) if row else None

    def list_main_versions(self) -> list[MainVersionRecord]:
        with self._session() as session:
            rows = session.scalars(sa.select(MainModelVersion).order_by(MainModelVersion.id)).all()
            return [_main_record(r) for r in rows]

    # -- learners and their interactions ---------------------------------------------------
    def add_learner(self, learner_id: str, *, baseline_completed_at: datetime | None) -> None:
        with self._session() as session:
            session.merge(Learner(id=learner_id, baselineCompletedAt=baseline_completed_at, deletedAt=None))

    def add_learners(self, learner_ids: Sequence[str], *, baseline_completed_at: datetime | None) -> None:
        """Bulk insert of new learners (one transaction)."""
        now = utcnow()
        rows = [
            {"id": learner_id, "baselineCompletedAt": baseline_completed_at, "deletedAt": None, "createdAt": now}
            for learner_id in learner_ids
        ]
        with self._session() as session:
            if rows:
                session.execute(sa.insert(Learner), rows)

    def learner_exists(self, learner_id: str) -> bool:
        with self._session() as session:
            return session.get(Learner, learner_id) is not None

    def soft_delete_learner(self, learner_id: str) -> None:
        with self._session() as session:
            learner = session.get(Learner, learner_id)
            if learner is None:
                raise RegistryError(f"Unknown learner {learner_id}")
            learner.deletedAt = utcnow()

    def add_interactions(
        self,
        learner_id: str,
        features: np.ndarray,
        targets: dict[str, np.ndarray],
        *,
        created_at: datetime | None = None,
    ) -> int:
        if features.ndim != 2 or features.shape[1] != NUM_FEATURES:
            raise RegistryError(f"interactions need shape (n, {NUM_FEATURES}), got {features.shape}")
        packed = np.ascontiguousarray(features, dtype="<f4")
        when = created_at or utcnow()
        rows = [
            {
                "learnerId": learner_id,
                "features": packed[i].tobytes(),
                "difficulty": int(targets["difficulty"][i]),
                "modality": int(targets["modality"][i]),
                "success": int(targets["success"][i]),
                "createdAt": when,
            }
            for i in range(packed.shape[0])
        ]
        with self._session() as session:
            if session.get(Learner, learner_id) is None:
                raise RegistryError(f"Unknown learner {learner_id}")
            if rows:
                session.execute(sa.insert(LearnerInteraction), rows)
        return len(rows)

    def get_interactions(self, learner_id: str) -> LearnerInteractions:
        with self._session() as session:
            if session.get(Learner, learner_id) is None:
                raise RegistryError(f"Unknown learner {learner_id}")
            rows = session.execute(
                sa.select(
                    LearnerInteraction.features,
                    LearnerInteraction.difficulty,
                    LearnerInteraction.modality,
                    LearnerInteraction.success,
                )
                .where(LearnerInteraction.learnerId == learner_id)
                .order_by(LearnerInteraction.id)
            ).all()
        features = np.frombuffer(b"".join(r[0] for r in rows), dtype="<f4").reshape(len(rows), NUM_FEATURES)
        targets = {
            head: np.array([r[i + 1] for r in rows], dtype=np.int64)
            for i, head in enumerate(("difficulty", "modality", "success"))
        }
        return LearnerInteractions(features=features.astype(np.float32), targets=targets)

    def count_interactions_since(self, learner_id: str, since: datetime | None) -> int:
        with self._session() as session:
            query = sa.select(sa.func.count()).where(LearnerInteraction.learnerId == learner_id)
            if since is not None:
                query = query.where(LearnerInteraction.createdAt > since)
            return int(session.scalar(query) or 0)

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

    def deleted_learners_with_models(self) -> list[str]:
        with self._session() as session:
            return list(
                session.scalars(
                    sa.select(Learner.id)
                    .join(PersonalizedModel, PersonalizedModel.learnerId == Learner.id)
                    .where(Learner.deletedAt.is_not(None))
                    .order_by(Learner.id)
                )
            )

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

    def active_learner_ids(self) -> list[str]:
        """Learners that have a personalized model and are not deleted."""
        with self._session() as session:
            return list(
                session.scalars(
                    sa.select(Learner.id)
                    .join(PersonalizedModel, PersonalizedModel.learnerId == Learner.id)
                    .where(Learner.deletedAt.is_(None))
                    .order_by(Learner.id)
                )
            )

    # -- personalized models ----------------------------------------------------------------
    def register_personalized_model(
        self, learner_id: str, metadata: dict[str, Any], *, base_model: str = DEFAULT_BASE_MODEL
    ) -> PersonalizedModelRecord:
        with self._session() as session:
            row = session.scalar(sa.select(PersonalizedModel).where(PersonalizedModel.learnerId == learner_id))
            if row is None:
                row = PersonalizedModel(learnerId=learner_id, baseModel=base_model, metadata_=metadata)
                session.add(row)
            else:
                row.metadata_ = metadata
                row.status = "ACTIVE"
            session.flush()
            return _personalized_record(row)

    def get_personalized_model(self, learner_id: str) -> PersonalizedModelRecord | None:
        with self._session() as session:
            row = session.scalar(sa.select(PersonalizedModel).where(PersonalizedModel.learnerId == learner_id))
            return _personalized_record(row) if row else None

    def delete_personalized_model(self, learner_id: str) -> bool:
        with self._session() as session:
            result = session.execute(sa.delete(PersonalizedModel).where(PersonalizedModel.learnerId == learner_id))
            return bool(result.rowcount)

    # -- training sessions ------------------------------------------------------------------
    def record_training_session(self, record: TrainingSessionInput) -> int:
        with self._session() as session:
            row = ModelTrainingSession(
                learnerId=record.learner_id,
                sourceVersion=record.source_version,
                rebasedFrom=record.rebased_from,
                samples=record.samples,
                epochs=record.epochs,
                lossBefore=record.loss_before,
                accuracyBefore=record.accuracy_before,
                lossAfter=record.loss_after,
                accuracyAfter=record.accuracy_after,
                deltaNorm=record.delta_norm,
                deltaPath=record.delta_path,
                startedAt=record.started_at,
                completedAt=record.completed_at,
            )
            session.add(row)
            session.flush()
            return row.id

    def last_session_time(self, learner_id: str) -> datetime | None:
        with self._session() as session:
            return session.scalar(
                sa.select(sa.func.max(ModelTrainingSession.completedAt)).where(
                    ModelTrainingSession.learnerId == learner_id
                )
            )

    def get_eligible_for_aggregation(self, days: int, *, now: datetime | None = None) -> list[EligibleLearner]:
        """Each non-deleted learner's latest training session completed within `days` days."""
        cutoff = (now or utcnow()) - timedelta(days=days)
        latest = (
            sa.select(
                ModelTrainingSession.learnerId,
                sa.func.max(ModelTrainingSession.id).label("session_id"),
            )
            .where(ModelTrainingSession.completedAt >= cutoff)
            .group_by(ModelTrainingSession.learnerId)
            .subquery()
        )
        query = (
            sa.select(ModelTrainingSession)
            .join(latest, latest.c.session_id == ModelTrainingSession.id)
            .join(Learner, Learner.id == ModelTrainingSession.learnerId, isouter=True)
            .where(Learner.deletedAt.is_(None))
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

    # -- federated updates --------------------------------------------------------------------
    def record_federated_update(self, update: FederatedUpdateInput) -> str:
        """Write the round in one transaction and return its updateId.

        A PROMOTED round registers `new_version` and promotes it over `base_version` (losing with
        PromotionConflict if the active version moved meanwhile); a REJECTED round records its
        candidate version as REJECTED. Either all of it is committed or none of it.
        """
        aggregated_at = update.aggregated_at or utcnow()
        update_id = f"fu-{aggregated_at:%Y%m%d%H%M%S}-{uuid.uuid4().hex[:8]}"
        with self._session() as session:
            if update.new_version is not None:
                promoted = update.status == "PROMOTED"
                version_row = MainModelVersion(
                    version=update.new_version,
                    status=ModelVersionStatus.CANDIDATE if promoted else ModelVersionStatus.REJECTED,
                    modelPath=update.new_version_path or "",
                    parentVersion=update.base_version,
                    metrics={**update.new_version_metrics, "updateId": update_id}
                    | ({} if promoted else {"rejectionReason": update.rejection_reason}),
                )
                session.add(version_row)
                try:
                    session.flush()
                except IntegrityError as exc:
                    raise RegistryError(f"Main model version {update.new_version} is already registered") from exc
                if promoted:
                    self._promote(session, version_row, expected_active=update.base_version)
            row = FederatedUpdate(
                updateId=update_id,
                aggregatedAt=aggregated_at,
                baseVersion=update.base_version,
                newVersion=update.new_version,
                status=update.status,
                rejectionReason=update.rejection_reason,
                aggregationStrategy=update.strategy,
                learningRate=update.learning_rate,
                contributingLearners=[c.learner_id for c in update.contributions if c.excluded_reason is None],
                performanceImprovement=update.performance_improvement,
                accuracyBefore=update.accuracy_before,
                accuracyAfter=update.accuracy_after,
                metrics=update.metrics,
                dpEnabled=update.dp_enabled,
                noiseMultiplier=update.noise_multiplier,
                clipNorm=update.clip_norm,
                sampleRate=update.sample_rate,
                epsilonRound=update.epsilon_round,
                epsilonTotal=update.epsilon_total,
                privacyDelta=update.privacy_delta,
            )
            session.add(row)
            session.flush()
            if update.contributions:
                session.execute(
                    sa.insert(FederatedUpdateContribution),
                    [
                        {
                            "federatedUpdateId": row.id,
                            "learnerId": c.learner_id,
                            "trainingSessionId": c.training_session_id,
                            "weight": c.weight,
                            "updateNorm": c.update_norm,
                            "clipped": c.clipped,
                            "excludedReason": c.excluded_reason,
                        }
                        for c in update.contributions
                    ],
                )
        return update_id

    def get_federated_updates(self) -> list[dict[str, Any]]:
        """Aggregation history, oldest first, in the shape AIVO's dashboard reads."""
        with self._session() as session:
            rows = session.scalars(sa.select(FederatedUpdate).order_by(FederatedUpdate.id)).all()
            return [_update_dict(r) for r in rows]

    def get_contributions(self, update_id: str) -> list[ContributionInput]:
        with self._session() as session:
            rows = session.scalars(
                sa.select(FederatedUpdateContribution)
                .join(FederatedUpdate, FederatedUpdate.id == FederatedUpdateContribution.federatedUpdateId)
                .where(FederatedUpdate.updateId == update_id)
                .order_by(FederatedUpdateContribution.id)
            ).all()
            return [ContributionInput(r.learnerId, r.weight, r.updateNorm, r.clipped, r.excludedReason) for r in rows]

    def aggregated_session_ids(self, session_ids: Iterable[int]) -> set[int]:
        """Which of these training sessions already went into a promoted version."""
        wanted = list(session_ids)
        if not wanted:
            return set()
        with self._session() as session:
            return set(
                session.scalars(
                    sa.select(FederatedUpdateContribution.trainingSessionId)
                    .join(FederatedUpdate, FederatedUpdate.id == FederatedUpdateContribution.federatedUpdateId)
                    .where(
                        FederatedUpdate.status == "PROMOTED",
                        FederatedUpdateContribution.excludedReason.is_(None),
                        FederatedUpdateContribution.trainingSessionId.in_(wanted),
                    )
                )
            )

    def privacy_events(self) -> list[RecordedNoise]:
        """Every noised round that ran (promoted or rejected: both released information)."""
        with self._session() as session:
            rows = session.execute(
                sa.select(FederatedUpdate.noiseMultiplier, FederatedUpdate.sampleRate)
                .where(FederatedUpdate.dpEnabled.is_(True))
                .order_by(FederatedUpdate.id)
            ).all()
            return [RecordedNoise(float(z), float(q if q is not None else 1.0)) for z, q in rows]

    def learner_privacy_events(self, learner_ids: Iterable[str] | None = None) -> dict[str, list[RecordedNoise]]:
        """For each learner, the noised rounds it actually contributed to."""
        query = (
            sa.select(
                FederatedUpdateContribution.learnerId,
                FederatedUpdate.noiseMultiplier,
                FederatedUpdate.sampleRate,
            )
            .join(FederatedUpdate, FederatedUpdate.id == FederatedUpdateContribution.federatedUpdateId)
            .where(FederatedUpdate.dpEnabled.is_(True), FederatedUpdateContribution.excludedReason.is_(None))
            .order_by(FederatedUpdate.id)
        )
        if learner_ids is not None:
            query = query.where(FederatedUpdateContribution.learnerId.in_(list(learner_ids)))
        ledger: dict[str, list[RecordedNoise]] = {}
        with self._session() as session:
            for learner_id, z, q in session.execute(query):
                ledger.setdefault(learner_id, []).append(RecordedNoise(float(z), float(q if q is not None else 1.0)))
        return ledger

    # -- aggregation lease ----------------------------------------------------------------------
    @contextmanager
    def aggregation_lock(self, holder: str, *, ttl: timedelta = timedelta(hours=2)) -> Iterator[None]:
        """Hold the aggregation lease for the duration of the block.

        Dagster's concurrency pool serialises runs it launches; this lease also covers rounds
        started from the command line. An expired lease (a crashed holder) is taken over.
        """
        now = utcnow()
        try:
            with self._session() as session:
                session.execute(
                    sa.delete(AggregationLock).where(
                        AggregationLock.name == "aggregation", AggregationLock.expiresAt < now
                    )
                )
                session.add(AggregationLock(name="aggregation", holder=holder, acquiredAt=now, expiresAt=now + ttl))
        except IntegrityError:
            with self._session() as session:
                current = session.get(AggregationLock, "aggregation")
            who = f"{current.holder} since {current.acquiredAt:%Y-%m-%d %H:%M:%S} UTC" if current else "another run"
            raise AggregationInProgress(f"Another aggregation round is running ({who})") from None
        try:
            yield
        finally:
            with self._session() as session:
                session.execute(
                    sa.delete(AggregationLock).where(
                        AggregationLock.name == "aggregation", AggregationLock.holder == holder
                    )
                )

    # -- statistics ----------------------------------------------------------------------------
    def get_statistics(self) -> dict[str, int]:
        """Counts in the shape AIVO's dashboard reads."""
        with self._session() as session:

            def count(query: sa.Select[Any]) -> int:
                return int(session.scalar(query) or 0)

            return {
                "totalMainVersions": count(sa.select(sa.func.count(MainModelVersion.id))),
                "totalLearnerModels": count(sa.select(sa.func.count(PersonalizedModel.id))),
                "activeLearnerModels": count(
                    sa.select(sa.func.count(PersonalizedModel.id))
                    .outerjoin(Learner, Learner.id == PersonalizedModel.learnerId)
                    .where(PersonalizedModel.status == "ACTIVE", Learner.deletedAt.is_(None))
                ),
                "totalFederatedUpdates": count(sa.select(sa.func.count(FederatedUpdate.id))),
                "totalTrainingSessions": count(sa.select(sa.func.count(ModelTrainingSession.id))),
            }


def _is_connection_error(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    markers = (
        "could not connect",
        "connection refused",
        "could not translate host",
        "timeout expired",
        "server closed the connection",
        "unable to open database file",
        "no route to host",
        "name or service not known",
        "connection to server",
    )
    return exc.connection_invalidated or any(m in text for m in markers)


def _main_record(row: MainModelVersion) -> MainVersionRecord:
    return MainVersionRecord(
        version=row.version,
        status=ModelVersionStatus(row.status),
        model_path=row.modelPath,
        parent_version=row.parentVersion,
        metrics=dict(row.metrics or {}),
        created_at=row.createdAt,
        promoted_at=row.promotedAt,
    )


def _personalized_record(row: PersonalizedModel) -> PersonalizedModelRecord:
    return PersonalizedModelRecord(
        learner_id=row.learnerId,
        base_model=row.baseModel,
        status=row.status,
        metadata=dict(row.metadata_ or {}),
        created_at=row.createdAt,
    )


def _update_dict(row: FederatedUpdate) -> dict[str, Any]:
    return {
        "updateId": row.updateId,
        "aggregatedAt": row.aggregatedAt.isoformat(),
        "baseVersion": row.baseVersion,
        "newVersion": row.newVersion,
        "status": row.status,
        "rejectionReason": row.rejectionReason,
        "contributingLearners": list(row.contributingLearners or []),
        "aggregationStrategy": row.aggregationStrategy,
        "learningRate": row.learningRate,
        "performanceImprovement": row.performanceImprovement,
        "accuracyBefore": row.accuracyBefore,
        "accuracyAfter": row.accuracyAfter,
        "epsilonRound": row.epsilonRound,
        "epsilonTotal": row.epsilonTotal,
        "metrics": dict(row.metrics or {}),
    }
