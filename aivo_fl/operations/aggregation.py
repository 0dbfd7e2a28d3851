"""A federated aggregation round against the registry and the model store.

Order of writes, so a crash at any point leaves the old active version or the complete new one:
the candidate's weights go to a new version folder (atomically), then one registry transaction
records the round, registers the version and promotes it. An interrupted round leaves at most an
unregistered folder, whose number is never reused.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aivo_fl.ml.artifacts import load_main_model, save_main_model
from aivo_fl.ml.data import Samples
from aivo_fl.ml.federated_round import (
    LearnerUpdate,
    NoEligibleLearners,
    PrivacySettings,
    RoundOptions,
    RoundResult,
    aggregate_round,
)
from aivo_fl.ml.model import head_state
from aivo_fl.ml.round_status import RoundStatus
from aivo_fl.ml.training import split_train_val
from aivo_fl.ml.validation_gate import GateResult, validate_candidate, with_heads
from aivo_fl.operations.learners import MainModelMissing, split_interactions
from aivo_fl.operations.privacy_report import learner_ledgers, recorded_rounds
from aivo_fl.operations.store import ModelStore, load_samples
from aivo_fl.operations.versions import next_free_version
from aivo_fl.registry import ContributionInput, FederatedUpdateInput, MainVersionRecord, ModelRegistry
from aivo_fl.registry.schema import ModelVersionStatus, utcnow

Report = Callable[[str], None]


@dataclass(frozen=True)
class AggregationOutcome:
    round: RoundResult
    gate: GateResult
    base_version: str
    new_version: str | None  # promoted version; None if rejected or dry run
    candidate_version: str
    update_id: str | None  # None on a dry run
    already_aggregated: int
    dry_run: bool

    @property
    def promoted(self) -> bool:
        return self.new_version is not None

    @property
    def status(self) -> RoundStatus:
        if self.dry_run:
            return RoundStatus.DRY_RUN
        return RoundStatus.PROMOTED if self.promoted else RoundStatus.REJECTED

    def summary(self) -> dict[str, Any]:
        r, g = self.round, self.gate
        return {
            "updateId": self.update_id,
            "dryRun": self.dry_run,
            "baseVersion": self.base_version,
            "newVersion": self.new_version,
            "candidateVersion": self.candidate_version,
            "status": self.status.value,
            "rejectionReason": g.reason,
            "strategy": r.strategy,
            "contributingLearners": [c.learner_id for c in r.included],
            "excludedLearners": {c.learner_id: c.excluded_reason for c in r.excluded},
            "trainedInWindow": r.trained_in_window,
            "alreadyAggregated": self.already_aggregated,
            "accuracyBefore": g.heldout_accuracy_before,
            "accuracyAfter": g.heldout_accuracy_after,
            "curriculumAccuracyBefore": g.curriculum_accuracy_before,
            "curriculumAccuracyAfter": g.curriculum_accuracy_after,
            "performanceImprovement": g.performance_improvement,
            "epsilonRound": r.epsilon_round,
            "epsilonTotal": r.epsilon_total,
        }


class PrivacyConfig(Protocol):
    """Where the privacy knobs come from: `Settings`, or the Dagster resource with the same fields."""

    enable_differential_privacy: bool
    noise_multiplier: float
    clip_norm: float
    privacy_delta: float
    privacy_epsilon_budget: float | None
    privacy_learner_epsilon_budget: float | None


def privacy_settings_from(settings: PrivacyConfig) -> PrivacySettings:
    return PrivacySettings(
        enabled=settings.enable_differential_privacy,
        noise_multiplier=settings.noise_multiplier,
        clip_norm=settings.clip_norm,
        delta=settings.privacy_delta,
        epsilon_budget=settings.privacy_epsilon_budget,
        learner_epsilon_budget=settings.privacy_learner_epsilon_budget,
    )


def curriculum_validation_split(registry_record: MainVersionRecord, store: ModelStore) -> Samples:
    """The validation split the main model was scored on (same dataset, same seed, same split)."""
    metrics = registry_record.metrics
    path = Path(metrics["curriculumPath"])
    seed = int(metrics.get("dataSeed", 0))
    _, val = split_train_val(load_samples(path), metrics.get("validationFraction", 0.2), seed)
    return val


def run_federated_aggregation(
    registry: ModelRegistry,
    store: ModelStore,
    privacy: PrivacySettings,
    options: RoundOptions,
    *,
    report: Report = print,
    now: datetime | None = None,
    holder: str | None = None,
    rng: np.random.Generator | None = None,
) -> AggregationOutcome:
    """Run one round. Raises NoEligibleLearners, PrivacyBudgetExceeded, AggregationInProgress."""
    now = now or utcnow()
    holder = holder or f"{socket.gethostname()}:{os.getpid()}"
    active = registry.get_active_version()
    if active is None:
        raise MainModelMissing()
    lease = contextlib.nullcontext() if options.dry_run else registry.aggregation_lock(holder)
    with lease:
        return _run_round(registry, store, privacy, options, active, report, now, rng or np.random.default_rng())


def _run_round(
    registry: ModelRegistry,
    store: ModelStore,
    privacy: PrivacySettings,
    options: RoundOptions,
    active: MainVersionRecord,
    report: Report,
    now: datetime,
    rng: np.random.Generator,
) -> AggregationOutcome:
    report("=== Federated Aggregation ===" + (" (dry run: nothing will be written)" if options.dry_run else ""))
    report(f"Active main version: {active.version}")
    fresh = registry.get_eligible_for_aggregation(options.max_stale_days, now=now)
    consumed = registry.count_already_aggregated(options.max_stale_days, now=now)
    trained = len(fresh) + consumed
    report(
        f"Learners trained in the last {options.max_stale_days} days: {trained}"
        f" ({consumed} already aggregated, {len(fresh)} offered)"
    )
    if len(fresh) < options.min_learners:
        raise NoEligibleLearners(len(fresh), trained, options.min_learners, options.max_stale_days, consumed)
    session_of = {e.learner_id: e.session_id for e in fresh}
    updates = [
        LearnerUpdate(e.learner_id, Path(e.delta_path), e.samples, e.source_version, e.completed_at, e.improvement)
        for e in fresh
    ]
    lineage = [
        v.version
        for v in registry.list_main_versions()
        if v.status in (ModelVersionStatus.ACTIVE, ModelVersionStatus.DEPRECATED)
    ]
    rounds = recorded_rounds(registry)
    events = [e for r in rounds if (e := r.event()) is not None]
    ledger = {
        learner: [e for r in charged if (e := r.event()) is not None]
        for learner, charged in learner_ledgers(registry, rounds, session_of).items()
    }
    active_model, _ = load_main_model(store.main_root, active.version)
    result = aggregate_round(
        head_state(active_model),
        active.version,
        lineage,
        updates,
        options,
        privacy,
        events,
        ledger,
        now,
        rng,
        learners_root=store.learners_root,
    )
    report(
        f"Strategy: {result.strategy}, learning rate {options.learning_rate:g}, "
        f"min learners {options.min_learners}: {len(result.included)} contributing, {len(result.excluded)} excluded"
    )
    for c in result.excluded:
        report(f"  - excluded {c.learner_id}: {c.excluded_reason}")
    if privacy.enabled:
        report(
            f"Differential privacy: clip norm {privacy.clip_norm:g}, noise multiplier {privacy.noise_multiplier:g}; "
            f"epsilon this round {result.epsilon_round:.4g}, total {result.epsilon_total:.4g} "
            f"at delta {privacy.delta:g} (RDP accountant, sampling rate 1.0: learners are not sampled)"
        )
        if result.privacy_warning:
            report(f"⚠ {result.privacy_warning}")
    else:
        report("Differential privacy: OFF (no clipping, no noise, no privacy guarantee)")

    candidate_model = with_heads(active_model, result.candidate_heads or head_state(active_model))
    heldouts = [split_interactions(registry.get_interactions(c.learner_id))[1] for c in result.included]
    gate = validate_candidate(active_model, candidate_model, heldouts, curriculum_validation_split(active, store))
    report(
        f"Validation: learners' held-out accuracy {gate.heldout_accuracy_before:.2%} -> "
        f"{gate.heldout_accuracy_after:.2%} ({gate.performance_improvement:+.2f} points, "
        f"{gate.heldout_samples} samples); curriculum {gate.curriculum_accuracy_before:.2%} -> "
        f"{gate.curriculum_accuracy_after:.2%}"
    )
    candidate_version = next_free_version(registry, store, active.version, "minor")
    if options.dry_run:
        verdict = f"promote it as {candidate_version}" if gate.accepted else f"reject it ({gate.reason})"
        report(f"[dry run] The round would {verdict}. Nothing was written.")
        return AggregationOutcome(result, gate, active.version, None, candidate_version, None, consumed, True)

    metrics = {
        "validationAccuracy": gate.curriculum_accuracy_after,
        "federatedAccuracy": gate.heldout_accuracy_after,
        "curriculumPath": active.metrics.get("curriculumPath"),
        "dataSeed": active.metrics.get("dataSeed", 0),
        "validationFraction": active.metrics.get("validationFraction", 0.2),
        "bayesCeiling": active.metrics.get("bayesCeiling"),
    }
    path = None
    if gate.accepted:
        path = save_main_model(
            store.main_root, candidate_version, candidate_model, metrics, int(metrics["dataSeed"]), active.version
        )
    update_id = registry.record_federated_update(
        FederatedUpdateInput(
            base_version=active.version,
            new_version=candidate_version,
            status=RoundStatus.PROMOTED if gate.accepted else RoundStatus.REJECTED,
            rejection_reason=gate.reason,
            strategy=result.strategy,
            learning_rate=options.learning_rate,
            contributions=[
                ContributionInput(
                    c.learner_id, c.weight, c.update_norm, c.clipped, c.excluded_reason, session_of.get(c.learner_id)
                )
                for c in result.contributions
            ],
            performance_improvement=gate.performance_improvement,
            accuracy_before=gate.heldout_accuracy_before,
            accuracy_after=gate.heldout_accuracy_after,
            dp_enabled=privacy.enabled,
            noise_multiplier=privacy.noise_multiplier if privacy.enabled else None,
            clip_norm=privacy.clip_norm if privacy.enabled else None,
            sample_rate=result.privacy_event.sampling_rate if result.privacy_event else None,
            epsilon_round=result.epsilon_round,
            epsilon_total=result.epsilon_total,
            privacy_delta=privacy.delta if privacy.enabled else None,
            metrics={
                "curriculumAccuracyBefore": gate.curriculum_accuracy_before,
                "curriculumAccuracyAfter": gate.curriculum_accuracy_after,
                "heldoutSamples": gate.heldout_samples,
                "aggregateNorm": result.aggregate_norm,
                "trainedInWindow": result.trained_in_window,
                "alreadyAggregated": consumed,
                "maxStaleDays": options.max_stale_days,
                "minLearners": options.min_learners,
                "learnerEpsilons": result.learner_epsilons,
            },
            aggregated_at=now,
            new_version_path=str(path) if path else None,
            new_version_metrics=metrics,
        )
    )
    if gate.accepted:
        report(f"✓ Promoted version {candidate_version} (update {update_id})")
        return AggregationOutcome(
            result, gate, active.version, candidate_version, candidate_version, update_id, consumed, False
        )
    report(f"✗ {gate.reason}. Version {active.version} stays active (update {update_id}).")
    return AggregationOutcome(result, gate, active.version, None, candidate_version, update_id, consumed, False)
