"""Federated rounds: the update, what each learner contributed, and the privacy ledger."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aivo_fl.ml.round.status import RoundStatus
from aivo_fl.registry.app_tables import AppTables
from aivo_fl.registry.base import RegistryBase, checked_learner_id
from aivo_fl.registry.erasure import IdScrubber
from aivo_fl.registry.errors import RegistryError
from aivo_fl.registry.learners import IN_CHUNK
from aivo_fl.registry.schema import (
    FederatedUpdate,
    FederatedUpdateContribution,
    MainModelVersion,
    ModelTrainingSession,
    ModelVersionStatus,
    utcnow,
)
from aivo_fl.registry.versions import promote_row


@dataclass(frozen=True)
class ContributionInput:
    learner_id: str
    weight: float
    update_norm: float | None
    clipped: bool
    excluded_reason: str | None
    training_session_id: int | None = None
    # The learner was in the round's population (could have been sampled), so their privacy ledger
    # pays for the round. None: charged exactly when included (rounds that sample nobody).
    charged: bool | None = None

    @property
    def is_charged(self) -> bool:
        return self.excluded_reason is None if self.charged is None else self.charged


@dataclass(frozen=True)
class FederatedUpdateInput:
    base_version: str
    new_version: str | None
    status: RoundStatus  # PROMOTED or REJECTED
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
    # Learner sampling and adaptive clipping (None: every learner offered, fixed clip norm).
    eligible_population: int | None = None
    dp_denominator: float | None = None
    clip_target_quantile: float | None = None
    quantile_noise_multiplier: float | None = None
    clip_quantile_estimate: float | None = None
    gate_noise_multiplier: float | None = None


@dataclass(frozen=True)
class RoundSummary:
    """A recorded round without its learners: what the operator's views (UI, reports) read."""

    number: int  # 1 for the first round ever recorded
    update_id: str
    aggregated_at: datetime
    base_version: str
    new_version: str | None  # the candidate's version, promoted or not
    status: RoundStatus
    rejection_reason: str | None
    epsilon_round: float | None
    epsilon_total: float | None
    metrics: dict[str, Any]  # the round's own figures (curriculum accuracies, server step, ...)


# What stands for a learner deleted or erased while the round ran (the round holds no erasure key).
GONE_MEANWHILE = "erased"


def _without_learners_gone(session: Session, app: AppTables, update: FederatedUpdateInput) -> FederatedUpdateInput:
    """The round as recorded: nothing of a learner deleted (or erased) since the round read its
    learners, in the same transaction as the rows are written, so an erasure that ran meanwhile
    finds nothing of theirs brought back. Their update, if read before, stays in the aggregate as
    any past contribution does."""
    learner, contributions = app.learner.c, update.contributions
    ids = sorted({c.learner_id for c in contributions})
    sessions = sorted({c.training_session_id for c in contributions if c.training_session_id is not None})
    deleted: set[str] = set()
    kept_sessions: set[int] = set()
    for start in range(0, max(len(ids), len(sessions)), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        deleted.update(
            session.scalars(sa.select(learner.id).where(learner.id.in_(chunk), learner.deletedAt.is_not(None)))
        )
        in_chunk = sessions[start : start + IN_CHUNK]
        kept_sessions.update(
            session.scalars(sa.select(ModelTrainingSession.id).where(ModelTrainingSession.id.in_(in_chunk)))
        )
    # Erasure deletes the learner's sessions (and, on our own tables, the learner): a session the
    # round read that is gone now is a learner erased meanwhile.
    erased = {
        c.learner_id
        for c in contributions
        if c.training_session_id is not None and c.training_session_id not in kept_sessions
    }
    gone = deleted | erased
    if not gone:
        return update
    scrubbers = [IdScrubber(learner_id, GONE_MEANWHILE) for learner_id in sorted(gone)]

    def scrub(value: Any) -> Any:
        for scrubber in scrubbers:
            value = scrubber(value)
        return value

    return replace(
        update,
        contributions=[c for c in update.contributions if c.learner_id not in gone],
        metrics=scrub(update.metrics),
        new_version_metrics=scrub(update.new_version_metrics),
    )


class Rounds(RegistryBase):
    def record_federated_update(self, update: FederatedUpdateInput) -> str:
        """Write the round in one transaction and return its updateId.

        A PROMOTED round registers `new_version` and promotes it over `base_version` (losing with
        PromotionConflict if the active version moved meanwhile); a REJECTED round records its
        candidate version as REJECTED. Either all of it is committed or none of it.
        """
        if update.status not in (RoundStatus.PROMOTED, RoundStatus.REJECTED):
            raise RegistryError(f"A round is recorded as PROMOTED or REJECTED, not {update.status}")
        for contribution in update.contributions:
            checked_learner_id(contribution.learner_id)
        aggregated_at = update.aggregated_at or utcnow()
        update_id = f"fu-{aggregated_at:%Y%m%d%H%M%S}-{uuid.uuid4().hex[:8]}"
        with self._session() as session:
            update = _without_learners_gone(session, self.app, update)
            if update.new_version is not None:
                _record_candidate(session, update, update_id)
            row = _update_row(update, update_id, aggregated_at)
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
                            "charged": c.is_charged,
                        }
                        for c in update.contributions
                    ],
                )
        return update_id

    def get_federated_updates(self) -> list[dict[str, Any]]:
        """Aggregation history, oldest first, in the shape AIVO's dashboard reads.

        Each update also carries what its privacy accounting used (``privacy``) and who it charged
        (``chargedLearners``), so every privacy figure of ``stats`` can be re-derived from it.
        """
        charged: dict[int, list[str]] = {}
        with self._session() as session:
            rows = session.scalars(sa.select(FederatedUpdate).order_by(FederatedUpdate.id)).all()
            query = sa.select(FederatedUpdateContribution.federatedUpdateId, FederatedUpdateContribution.learnerId)
            for update_pk, learner_id in session.execute(
                query.where(FederatedUpdateContribution.charged.is_(True)).order_by(FederatedUpdateContribution.id)
            ):
                charged.setdefault(update_pk, []).append(learner_id)
            return [_update_dict(r) | {"chargedLearners": charged.get(r.id, [])} for r in rows]

    def round_summaries(self) -> list[RoundSummary]:
        """Every recorded round, oldest first, read without its contributions (one query, any cohort size)."""
        with self._session() as session:
            rows = session.scalars(sa.select(FederatedUpdate).order_by(FederatedUpdate.id)).all()
            return [
                RoundSummary(
                    number=number,
                    update_id=r.updateId,
                    aggregated_at=r.aggregatedAt,
                    base_version=r.baseVersion,
                    new_version=r.newVersion,
                    status=RoundStatus(r.status),
                    rejection_reason=r.rejectionReason,
                    epsilon_round=r.epsilonRound,
                    epsilon_total=r.epsilonTotal,
                    metrics=dict(r.metrics or {}),
                )
                for number, r in enumerate(rows, 1)
            ]

    def contribution_counts(self, update_id: str, *, before_draw: bool = False) -> dict[str | None, int]:
        """How many learners a round took (key None) and left out, by reason: counted in the database,
        so no learner id leaves it. ``before_draw``: only those left out before the draw (never in the
        population, not charged): under DP the draw's size is not released."""
        reason = FederatedUpdateContribution.excludedReason
        query = (
            sa.select(reason, sa.func.count())
            .join(FederatedUpdate, FederatedUpdate.id == FederatedUpdateContribution.federatedUpdateId)
            .where(FederatedUpdate.updateId == update_id)
            .group_by(reason)
        )
        if before_draw:
            query = query.where(FederatedUpdateContribution.charged.is_(False))
        with self._session() as session:
            return {r: int(n) for r, n in session.execute(query)}

    def round_privacy_records(self) -> list[dict[str, Any]]:
        """Every recorded round's privacy parameters, oldest first: what the accountant recomposes.

        Promoted and rejected rounds alike (both released information), with DP or without.
        """
        with self._session() as session:
            rows = session.scalars(sa.select(FederatedUpdate).order_by(FederatedUpdate.id)).all()
            return [{"updateId": r.updateId, "privacy": _privacy_dict(r)} for r in rows]

    def learner_charged_rounds(self, learner_ids: Iterable[str] | None = None) -> dict[str, list[str]]:
        """For each learner, the updateIds of the rounds whose population they were in, oldest first."""
        query = (
            sa.select(FederatedUpdateContribution.learnerId, FederatedUpdate.updateId)
            .join(FederatedUpdate, FederatedUpdate.id == FederatedUpdateContribution.federatedUpdateId)
            .where(FederatedUpdateContribution.charged.is_(True))
            .order_by(FederatedUpdate.id)
        )
        if learner_ids is not None:
            query = query.where(FederatedUpdateContribution.learnerId.in_([checked_learner_id(i) for i in learner_ids]))
        ledger: dict[str, list[str]] = {}
        with self._session() as session:
            for learner_id, update_id in session.execute(query):
                ledger.setdefault(learner_id, []).append(update_id)
        return ledger


def _record_candidate(session: Session, update: FederatedUpdateInput, update_id: str) -> None:
    """The round's candidate version: promoted over the base, or kept as REJECTED with the reason."""
    promoted = update.status == RoundStatus.PROMOTED
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
        promote_row(session, version_row, expected_active=update.base_version)


def _update_row(update: FederatedUpdateInput, update_id: str, aggregated_at: datetime) -> FederatedUpdate:
    return FederatedUpdate(
        updateId=update_id,
        aggregatedAt=aggregated_at,
        baseVersion=update.base_version,
        newVersion=update.new_version,
        status=RoundStatus(update.status).value,
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
        eligiblePopulation=update.eligible_population,
        dpDenominator=update.dp_denominator,
        clipTargetQuantile=update.clip_target_quantile,
        quantileNoiseMultiplier=update.quantile_noise_multiplier,
        clipQuantileEstimate=update.clip_quantile_estimate,
        gateNoiseMultiplier=update.gate_noise_multiplier,
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
        "privacy": _privacy_dict(row),
        "metrics": dict(row.metrics or {}),
    }


def _privacy_dict(row: FederatedUpdate) -> dict[str, Any]:
    """What the round's privacy accounting used, as recorded (keys of ``RoundPrivacy.from_json``)."""
    return {
        "dpEnabled": row.dpEnabled,
        "noiseMultiplier": row.noiseMultiplier,
        "clipNorm": row.clipNorm,
        "sampleRate": row.sampleRate if row.sampleRate is not None else 1.0,
        "eligiblePopulation": row.eligiblePopulation,
        "denominator": row.dpDenominator,
        "delta": row.privacyDelta,
        "clipTargetQuantile": row.clipTargetQuantile,
        "quantileNoiseMultiplier": row.quantileNoiseMultiplier,
        "clipQuantileEstimate": row.clipQuantileEstimate,
        "gateNoiseMultiplier": row.gateNoiseMultiplier,
    }
