"""A federated aggregation round against the registry and the model store.

The ML steps (gather -> aggregate -> gate, :mod:`aivo_fl.ml.round`) run on what this module reads
from the registry and the store; step 4, persist, is here. Order of writes, so a crash at any point
leaves the old active version or the complete new one: the candidate's weights (and its server
optimizer state) go to a new version folder atomically, then one registry transaction records the
round, registers the version and promotes it. An interrupted round leaves at most an unregistered
folder, whose number is never reused.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from aivo_fl.config import Settings
from aivo_fl.ml.aggregation.server_optimizers import State
from aivo_fl.ml.model import CurriculumNet, head_state
from aivo_fl.ml.round.accounting import PrivacyHistory
from aivo_fl.ml.round.candidate import RoundResult, RoundState
from aivo_fl.ml.round.gate import CONTRIBUTORS, EvaluationSet, GateResult
from aivo_fl.ml.round.gather import LearnerUpdate, NoEligibleLearners
from aivo_fl.ml.round.judge import Judging
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.round.run import run_round
from aivo_fl.ml.round.status import RoundStatus
from aivo_fl.ml.samples import Samples
from aivo_fl.ml.store.artifacts import (
    load_artifact,
    load_main_model,
    main_version_dir,
    save_main_model,
    trained_version,
)
from aivo_fl.ml.store.safe_files import NOT_IN_MANIFEST, FileRejected
from aivo_fl.ml.training.main_model import split_curriculum
from aivo_fl.operations.learners import MainModelMissing, split_interactions
from aivo_fl.operations.privacy_report import learner_ledgers, recorded_rounds
from aivo_fl.operations.store import ModelStore, load_samples
from aivo_fl.operations.versions import next_free_version
from aivo_fl.registry import ContributionInput, FederatedUpdateInput, MainVersionRecord, ModelRegistry
from aivo_fl.registry.schema import ModelVersionStatus, utcnow

Report = Callable[[str], None]
SERVER_STATE_NAME = "server_optimizer.safetensors"  # beside model.safetensors, listed in the manifest


def round_figures(result: RoundResult, verdict: GateResult, already_aggregated: int) -> dict[str, Any]:
    """What both the round summary and the registry's round metrics report, under the same names."""
    return {
        "serverOptimizer": result.server_optimizer,
        "trainedInWindow": result.trained_in_window,
        "alreadyAggregated": already_aggregated,
        "curriculumAccuracyBefore": verdict.curriculum_accuracy_before,
        "curriculumAccuracyAfter": verdict.curriculum_accuracy_after,
        "curriculumReference": verdict.curriculum_reference,
        "heldoutSamples": verdict.heldout_samples,  # None under DP
        "performanceImprovement": verdict.performance_improvement,  # points: privatized under DP
        "improvementNoiseStd": verdict.improvement_noise_std,  # points; 0: exact
        "improvementSource": improvement_source(result, verdict),
        "aggregateNorm": result.aggregate_norm,
        "stepScale": result.step_scale,  # the server step's accepted scale (backtracking; 1 = full step)
        "curriculumAnchor": result.curriculum_anchor,  # None: the candidate was not anchored
    }


PRIVATIZED = "privatized: the drawn learners' clipped accuracy changes, summed with Gaussian noise, charged"
EXACT = "exact: learners' held-out data, differential privacy off (no guarantee)"
NOT_JUDGED = "not judged: a dry run under differential privacy releases nothing from learners' data"


def improvement_source(result: RoundResult, verdict: GateResult) -> str:
    """What the learners' figure of a round is computed from: one of the three labels above."""
    if verdict.private is None:
        return EXACT
    return NOT_JUDGED if verdict.private.change is None else PRIVATIZED


def released_exclusions(result: RoundResult) -> dict[str, int]:
    """Exclusions by reason, as counts. Under DP only those decided before the draw (learners never
    in the round's population, so not charged): who was drawn, or how many, is not released."""
    counts: dict[str, int] = {}
    dp = result.privacy.record.dp_enabled
    for c in result.excluded:
        if dp and c.charged:
            continue
        counts[c.excluded_reason or ""] = counts.get(c.excluded_reason or "", 0) + 1
    return counts


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
            "wouldPromote": g.accepted,
            "rejectionReason": g.reason,
            "strategy": r.strategy,
            "learningRate": r.learning_rate,
            # The draw stays in the registry: under DP not even its size is released (the expected
            # cohort is, in ``privacy``), and exclusions are counts.
            "contributing": None if r.privacy.record.dp_enabled else len(r.included),
            "excludedByReason": released_exclusions(r),
            "accuracyBefore": g.heldout_accuracy_before,
            "accuracyAfter": g.heldout_accuracy_after,
            "performanceImprovement": g.performance_improvement,
            "epsilonRound": r.privacy.epsilon_round,
            "epsilonTotal": r.privacy.epsilon_total,
            "privacy": recorded_privacy(r),
            **round_figures(r, g, self.already_aggregated),
        }


def round_options(settings: Settings, *, learning_rate: float | None = None, **options: Any) -> RoundOptions:
    """Round options with the server optimizer from the settings; an explicit learning rate (the
    CLI's ``--learning-rate``, the Dagster config's) wins over ``SERVER_LEARNING_RATE``."""
    rate = learning_rate if learning_rate is not None else settings.server_learning_rate
    return RoundOptions(server_optimizer=settings.server_optimizer, learning_rate=rate, **options)


def curriculum_splits(registry_record: MainVersionRecord, store: ModelStore) -> tuple[Samples, Samples]:
    """The (training, validation) splits the main model was trained and selected on: same dataset,
    same seed, same split. The server anchors candidates on the first; the gate judges on the second.
    The test split that judged the trained model is left out of both (a version without a
    `testFraction` was trained on a two-way split)."""
    metrics = registry_record.metrics
    path = Path(metrics["curriculumPath"])
    seed = int(metrics.get("dataSeed", 0))
    splits = split_curriculum(
        load_samples(path), metrics.get("validationFraction", 0.2), metrics.get("testFraction", 0.0), seed
    )
    return splits.train, splits.validation


def curriculum_validation_split(registry_record: MainVersionRecord, store: ModelStore) -> Samples:
    """The validation split the main model was scored on."""
    return curriculum_splits(registry_record, store)[1]


def load_server_state(main_root: Path, version: str, optimizer: str) -> State:
    """The server optimizer's state saved with ``version`` (verified against its manifest); empty when
    the version has none (a trained version, or state of another optimizer): the optimizer starts fresh."""
    try:
        tensors, _ = load_artifact(main_root, main_version_dir(main_root, version), SERVER_STATE_NAME)
    except FileRejected as exc:
        if exc.reason == NOT_IN_MANIFEST:
            return {}
        raise
    prefix = f"{optimizer}."
    return {k.removeprefix(prefix): v.astype(np.float64) for k, v in tensors.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class _Read:
    """What a round read from the registry and the store."""

    state: RoundState
    active_model: CurriculumNet
    session_of: dict[str, int]
    already_aggregated: int


def _read(
    registry: ModelRegistry,
    store: ModelStore,
    active: MainVersionRecord,
    options: RoundOptions,
    now: datetime,
    report: Report,
) -> _Read:
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
    lineage = [
        v.version
        for v in registry.list_main_versions()
        if v.status in (ModelVersionStatus.ACTIVE, ModelVersionStatus.DEPRECATED)
    ]
    active_model, _ = load_main_model(store.main_root, active.version)
    state = RoundState(
        base_version=active.version,
        base_heads=head_state(active_model),
        lineage=lineage,
        offered=[
            LearnerUpdate(e.learner_id, Path(e.delta_path), e.samples, e.source_version, e.completed_at, e.improvement)
            for e in fresh
        ],
        learners_root=store.learners_root,
        privacy_history=_privacy_history(registry, session_of),
        optimizer_state=load_server_state(store.main_root, active.version, options.server_optimizer),
    )
    return _Read(state, active_model, session_of, consumed)


def _privacy_history(registry: ModelRegistry, learner_ids: Iterable[str]) -> PrivacyHistory:
    """The recorded rounds as they ran, and for each offered learner the rounds that charged them."""
    rounds = recorded_rounds(registry)
    return PrivacyHistory(rounds, learner_ledgers(registry, rounds, learner_ids))


def _report_round(result: RoundResult, privacy: PrivacySettings, options: RoundOptions, report: Report) -> None:
    dp = result.privacy.record.dp_enabled
    taking_part = "the drawn learners" if dp else f"{len(result.included)} contributing"
    report(
        f"Strategy: {result.strategy}, server optimizer {result.server_optimizer} (learning rate "
        f"{result.learning_rate:g}), min learners {options.min_learners}: {taking_part}"
    )
    for reason, count in released_exclusions(result).items():
        report(f"  - excluded before the draw: {count} ({reason})")
    _report_privacy(result, privacy, report)


def _report_privacy(result: RoundResult, privacy: PrivacySettings, report: Report) -> None:
    p = result.privacy
    if not privacy.enabled:
        drawn = f"{len(p.included)} of {len(p.charged)} eligible learners drawn at sample rate {privacy.sample_rate:g}"
        report(f"Differential privacy: OFF (no clipping, no noise, no privacy guarantee); {drawn}")
        return
    clip = f"clip norm {result.clip_norm:.4g}"
    if privacy.clip_target_quantile is not None:
        clip += f" (adaptive, target quantile {privacy.clip_target_quantile:g})"
    total = "no guarantee" if p.epsilon_total is None else f"{p.epsilon_total:.4g}"
    record = p.record
    report(
        f"Differential privacy: noise multiplier {record.noise_multiplier:g}, {clip}, gate query noise multiplier "
        f"{record.gate_noise_multiplier:.3g}; {len(p.charged) + len(p.out_of_budget)} eligible learners sampled at "
        f"rate {record.sample_rate:g}, denominator {p.denominator:.4g} (expected cohort); epsilon this round "
        f"{p.epsilon_round:.4g}, worst-case learner epsilon {total} at delta {record.delta:g} (PLD accountant over "
        "the recorded rounds)"
    )
    if p.warning:
        report(f"⚠ {p.warning}")
    if result.dry_run:
        report(
            f"[dry run] Nothing is released and no privacy budget is spent: the round would spend epsilon "
            f"{p.epsilon_round:.4g}. No verdict on the candidate ({NOT_JUDGED})."
        )
        report(f"[dry run] Planner: {_planner_view(privacy, record.population or 0)}")


def _planner_view(privacy: PrivacySettings, population: int) -> str:
    """The planner's advice for this population: for the deployment's target, else for its budget
    (or epsilon 2) over 52 rounds."""
    from aivo_fl.ml.privacy.planner import plan

    target = privacy.target_epsilon or privacy.epsilon_budget or 2.0
    rounds = privacy.target_rounds if privacy.target_epsilon else 52
    found = plan(target, rounds, max(population, 1), privacy.delta, adaptive=privacy.clip_target_quantile is not None)
    return found.line()


def recorded_privacy(result: RoundResult) -> dict[str, Any]:
    """What the round used, for the registry: the accountant recomposes every figure from it."""
    r = result.privacy.record
    return {
        "dp_enabled": r.dp_enabled,
        "noise_multiplier": r.noise_multiplier,
        "clip_norm": r.clip_norm,
        "sample_rate": r.sample_rate,
        "privacy_delta": r.delta,
        "eligible_population": r.population,
        "dp_denominator": r.denominator,
        "clip_target_quantile": r.target_quantile,
        "quantile_noise_multiplier": r.quantile_noise_multiplier,
        "clip_quantile_estimate": r.clip_quantile_estimate,
        "gate_noise_multiplier": r.gate_noise_multiplier,
        "epsilon_round": result.privacy.epsilon_round,
        "epsilon_total": result.privacy.epsilon_total,
    }


def _judging(
    registry: ModelRegistry, store: ModelStore, active: MainVersionRecord, read: _Read, result: RoundResult
) -> Judging:
    """What the gate judges on, from the data the operations layer has: the drawn learners' held-out
    interactions, the curriculum's validation split, and the trained version as the curriculum floor."""
    heldouts = [split_interactions(registry.get_interactions(c.learner_id))[1] for c in result.included]
    train, val = curriculum_splits(active, store)
    reference = trained_version(active.version)
    trained = read.active_model if reference == active.version else load_main_model(store.main_root, reference)[0]
    return Judging(read.active_model, trained, EvaluationSet({CONTRIBUTORS: heldouts}, val), train)


def _report_anchor(result: RoundResult, report: Report) -> None:
    a = result.curriculum_anchor
    if a is None:
        report("Curriculum anchor: off (the candidate is judged as the server step left it)")
        return
    report(
        f"Curriculum anchor: the candidate's personal layers took {a['epochs']} epoch(s) of SGD at "
        f"{a['learningRate']:g} on {a['samples']} samples of the curriculum's training split (server-side: "
        "no learner data, no privacy cost)"
    )


def _report_gate(verdict: GateResult, report: Report) -> None:
    curriculum = (
        f"curriculum {verdict.curriculum_accuracy_before:.2%} -> {verdict.curriculum_accuracy_after:.2%} (trained "
        f"version: {verdict.curriculum_reference:.2%}; server-held data)"
    )
    if verdict.private is not None:
        change = verdict.private.change
        learners = (
            "learners' held-out accuracy not judged (dry run)"
            if change is None
            else f"learners' held-out accuracy {100 * change:+.2f} points (privatized mean, noise std "
            f"{100 * verdict.private.noise_std:.2f} points)"
        )
        report(f"Validation: {learners}; {curriculum}")
        return
    report(
        f"Validation: learners' held-out accuracy {verdict.heldout_accuracy_before:.2%} -> "
        f"{verdict.heldout_accuracy_after:.2%} ({verdict.performance_improvement:+.2f} points, "
        f"{verdict.heldout_samples} samples); curriculum {verdict.curriculum_accuracy_before:.2%} -> "
        f"{verdict.curriculum_accuracy_after:.2%} (trained version: {verdict.curriculum_reference:.2%})"
    )


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
    read = _read(registry, store, active, options, now, report)
    judging = partial(_judging, registry, store, active, read)
    judged_step = run_round(read.state, options, privacy, judging, now, rng)
    result, candidate, verdict = judged_step.result, judged_step.candidate, judged_step.verdict
    _report_round(result, privacy, options, report)
    if judged_step.tries:  # 0: not judged (a dry run under DP)
        _report_anchor(result, report)
        _report_gate(verdict, report)
    if judged_step.step_scale < 1.0:
        report(f"Backtracking: the full server step was refused; promoted at {judged_step.step_scale:g} of it.")
    candidate_version = next_free_version(registry, store, active.version, "minor")
    if options.dry_run:
        outcome = f"promote it as {candidate_version}" if verdict.accepted else f"reject it ({verdict.reason})"
        if verdict.private is not None:
            outcome = "be judged by the gate on its charged, noised figures (no verdict here)"
        report(f"[dry run] The round would {outcome}. Nothing was written.")
        return AggregationOutcome(
            result, verdict, active.version, None, candidate_version, None, read.already_aggregated, True
        )
    judged = Judged(active, read, result, candidate, verdict, candidate_version)
    update_id = persist_round(registry, store, judged, privacy, options, now)
    promoted = candidate_version if verdict.accepted else None
    if promoted:
        report(f"✓ Promoted version {candidate_version} (update {update_id})")
    else:
        report(f"✗ {verdict.reason}. Version {active.version} stays active (update {update_id}).")
    return AggregationOutcome(
        result, verdict, active.version, promoted, candidate_version, update_id, read.already_aggregated, False
    )


@dataclass(frozen=True)
class Judged:
    """A round's candidate with its verdict: what step 4 persists."""

    active: MainVersionRecord
    read: _Read
    result: RoundResult
    candidate: CurriculumNet
    verdict: GateResult
    version: str  # the candidate's version number (kept by a rejected round, never reused)


def _version_metrics(judged: Judged) -> dict[str, Any]:
    active, verdict = judged.active.metrics, judged.verdict
    return {
        "validationAccuracy": verdict.curriculum_accuracy_after,
        "federatedAccuracy": verdict.heldout_accuracy_after,  # None under DP (not released)
        "performanceImprovement": verdict.performance_improvement,
        "improvementNoiseStd": verdict.improvement_noise_std,
        "curriculumPath": active.get("curriculumPath"),
        "dataSeed": active.get("dataSeed", 0),
        "validationFraction": active.get("validationFraction", 0.2),
        "testFraction": active.get("testFraction", 0.0),
        "bayesCeiling": active.get("bayesCeiling"),
    }


def _round_metrics(judged: Judged, options: RoundOptions) -> dict[str, Any]:
    return {
        **round_figures(judged.result, judged.verdict, judged.read.already_aggregated),
        "maxStaleDays": options.max_stale_days,
        "minLearners": options.min_learners,
    }


def persist_round(
    registry: ModelRegistry,
    store: ModelStore,
    judged: Judged,
    privacy: PrivacySettings,
    options: RoundOptions,
    now: datetime,
) -> str:
    """Step 4: write an accepted candidate (weights + server optimizer state), then record the round
    and promote in one registry transaction. Returns the update id."""
    result, verdict, metrics = judged.result, judged.verdict, _version_metrics(judged)
    path = None
    if verdict.accepted:
        state = {f"{result.server_optimizer}.{k}": v for k, v in result.optimizer_state.items()}
        path = save_main_model(
            store.main_root,
            judged.version,
            judged.candidate,
            metrics,
            int(metrics["dataSeed"]),
            judged.active.version,
            extra_files={SERVER_STATE_NAME: state} if state else None,
        )
    return registry.record_federated_update(
        FederatedUpdateInput(
            base_version=judged.active.version,
            new_version=judged.version,
            status=RoundStatus.PROMOTED if verdict.accepted else RoundStatus.REJECTED,
            rejection_reason=verdict.reason,
            strategy=result.strategy,
            learning_rate=result.learning_rate,
            contributions=[
                ContributionInput(
                    c.learner_id,
                    c.weight,
                    c.update_norm,
                    c.clipped,
                    c.excluded_reason,
                    judged.read.session_of.get(c.learner_id),
                    charged=c.charged,
                )
                for c in result.contributions
            ],
            performance_improvement=verdict.performance_improvement,
            accuracy_before=verdict.heldout_accuracy_before,
            accuracy_after=verdict.heldout_accuracy_after,
            **recorded_privacy(result),
            metrics=_round_metrics(judged, options),
            aggregated_at=now,
            new_version_path=str(path) if path else None,
            new_version_metrics=metrics,
        )
    )
