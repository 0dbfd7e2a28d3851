"""One federated aggregation round per materialization: a new main version, or a recorded rejection."""

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from aivo_fl.defs.assets.learners import learner_training
from aivo_fl.defs.readable import percent, rounded, significant, tiny
from aivo_fl.defs.resources import (
    FederatedSettingsResource,
    ModelStoreResource,
    RegistryResource,
    ReporterResource,
)
from aivo_fl.defs.retries import TRANSIENT_RETRY, fail_fast_unless_transient
from aivo_fl.defs.run_tags import OUTCOME_TAG, TRIGGER_TAG, VERSIONS_TAG, round_versions
from aivo_fl.ml.aggregation.strategies import STRATEGIES
from aivo_fl.ml.privacy.mechanism import PrivacyBudgetExceeded
from aivo_fl.ml.round.accounting import PrivacyPlanOutOfReach
from aivo_fl.ml.round.gather import NoEligibleLearners
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.operations.aggregation import round_options, run_federated_aggregation
from aivo_fl.operations.round_report import build_round_report
from aivo_fl.operations.run_log import appending_to

AGGREGATION_POOL = "aggregation"
_DEFAULTS = RoundOptions()
REFUSALS = {
    NoEligibleLearners: "no_eligible_learners",
    PrivacyBudgetExceeded: "privacy_budget_exceeded",
    PrivacyPlanOutOfReach: "privacy_plan_out_of_reach",
}


class AggregationConfig(dg.Config):
    """The activation guide's aggregation options."""

    dry_run: bool = Field(False, description="compute and report the round, write nothing")
    min_learners: int = Field(_DEFAULTS.min_learners, ge=1, description="fewest usable learner updates for a round")
    strategy: str = Field(_DEFAULTS.strategy, description=f"one of {', '.join(STRATEGIES)}")
    max_stale_days: int = Field(_DEFAULTS.max_stale_days, ge=1, description="ignore training older than this many days")
    learning_rate: float | None = Field(
        None, gt=0, description="server learning rate (default: SERVER_LEARNING_RATE, else the optimizer's own)"
    )

    def round_options(self, federated: FederatedSettingsResource) -> RoundOptions:
        return round_options(
            federated.settings(),
            learning_rate=self.learning_rate,
            strategy=self.strategy,
            min_learners=self.min_learners,
            max_stale_days=self.max_stale_days,
            dry_run=self.dry_run,
        )


@dg.asset(
    group_name="federated",
    deps=[learner_training],
    kinds={"pytorch"},
    pool=AGGREGATION_POOL,
    retry_policy=TRANSIENT_RETRY,
    output_required=False,  # a dry run materializes nothing
)
def federated_main_model(
    context: dg.AssetExecutionContext,
    config: AggregationConfig,
    registry: RegistryResource,
    model_store: ModelStoreResource,
    federated_settings: FederatedSettingsResource,
    privacy: dg.ResourceParam[PrivacySettings],
    reporter: ReporterResource,
) -> Iterator[dg.MaterializeResult]:
    """The main model after aggregating the learners' deltas (DP-FedAvg), validated before promotion.

    One materialization per round, promoted or rejected. A dry run only logs what it would do.
    """
    federated_settings.require_enabled()
    report = appending_to(
        Path(reporter.aggregation_log_path),
        reporter.for_context(context),
        heading=f"-- Dagster run {context.run.run_id} (trigger: {context.run.tags.get(TRIGGER_TAG, 'ui')})",
    )
    try:
        # Decisions and permanent errors fail at once with their one line; transient ones are retried.
        with fail_fast_unless_transient():
            outcome = run_federated_aggregation(
                registry.get_registry(),
                model_store.get_store(),
                privacy,  # the deployment's, from its environment: no run config reaches it
                config.round_options(federated_settings),
                report=report,
                holder=f"dagster-run:{context.run.run_id}",
            )
    except dg.Failure as failure:
        report(f"✗ {failure.description}")  # in the aggregation log; the tag is for alerts
        tag = REFUSALS.get(type(failure.__cause__), "refused")
        context.instance.add_run_tags(context.run.run_id, {OUTCOME_TAG: tag})
        raise
    s = outcome.summary()
    # Each round's run says how it ended: the UI filters on it and alerts read it.
    context.instance.add_run_tags(
        context.run.run_id,
        {OUTCOME_TAG: s["status"].lower(), VERSIONS_TAG: round_versions(s["baseVersion"], s["newVersion"])},
    )
    if outcome.dry_run:
        context.log.info(f"Dry run, nothing materialized: {s}")
        return
    yield dg.MaterializeResult(metadata={**_metadata(s), "round_report": _report(context, registry, s["updateId"])})


def _report(context: dg.AssetExecutionContext, registry: RegistryResource, update_id: str) -> dg.MetadataValue:
    """The round's report; the round is recorded whatever happens here, so a report that cannot be
    drawn is a warning on the run, not a failed round."""
    try:
        return dg.MetadataValue.md(build_round_report(registry.get_registry(), update_id).markdown)
    except Exception as exc:
        context.log.warning(f"Round report not rendered: {type(exc).__name__}: {exc}")
        return dg.MetadataValue.text(f"not rendered ({type(exc).__name__}); the round is in the registry")


def _metadata(s: dict[str, Any]) -> dict[str, Any]:
    """The round's summary as numeric metadata (the UI plots it across materializations)."""
    return {
        "status": s["status"],
        "dry_run": s["dryRun"],
        "base_version": s["baseVersion"],
        "new_version": s["newVersion"] or "-",
        "candidate_version": s["candidateVersion"],
        "update_id": s["updateId"] or "-",
        "strategy": s["strategy"],
        "server_optimizer": s["serverOptimizer"],
        "server_learning_rate": s["learningRate"],
        "server_step_scale": s["stepScale"],  # < 1: backtracking halved a refused step
        "curriculum_anchor_samples": (s["curriculumAnchor"] or {}).get("samples", 0),  # 0: not anchored
        # Under DP the draw stays in the registry: neither who nor how many were drawn is released.
        "contributing_learners": s["contributing"] if s["contributing"] is not None else "withheld (DP)",
        "excluded_before_draw": dg.MetadataValue.json(s["excludedByReason"]),  # counts by reason
        **_learner_figures(s),
        "curriculum_accuracy_before_pct": percent(s["curriculumAccuracyBefore"]),
        "curriculum_accuracy_after_pct": percent(s["curriculumAccuracyAfter"]),
        "curriculum_reference_pct": percent(s["curriculumReference"]),
        "rejection_reason": s["rejectionReason"] or "-",
        **privacy_metadata(s["privacy"], s["epsilonRound"], s["epsilonTotal"]),
    }


def _learner_figures(s: dict[str, Any]) -> dict[str, Any]:
    """The learners' part of the gate as released: privatized (with its noise std) under DP, exact
    without; labelled which. The curriculum figures beside it are server-held data."""
    figures: dict[str, Any] = {
        "learner_figures": s["improvementSource"],
        "curriculum_figures": "server-held: the curriculum's validation split, no learner data",
    }
    if s["performanceImprovement"] is not None:
        figures["performance_improvement_points"] = rounded(s["performanceImprovement"], 2)
        figures["performance_improvement_noise_std_points"] = rounded(s["improvementNoiseStd"], 3)
    if s["accuracyBefore"] is not None:  # exact figures: DP off only
        figures["accuracy_before_pct"] = percent(s["accuracyBefore"])
        figures["accuracy_after_pct"] = percent(s["accuracyAfter"])
    return figures


def privacy_metadata(recorded: dict[str, Any], epsilon_round: float | None, epsilon_total: float | None) -> dict:
    """What the round's accounting used, as numbers the UI plots across rounds. Without noise there is
    no epsilon to plot: ``privacy_guarantee`` says so instead of a made-up 0."""
    shown = {  # figures to four significant digits, the tiny delta as text (not "1.0600000E-5")
        "privacy_noise_multiplier": (recorded["noise_multiplier"], float),
        "privacy_clip_norm": (recorded["clip_norm"], significant),
        "privacy_sample_rate": (recorded["sample_rate"], float),
        "privacy_eligible_learners": (recorded["eligible_population"], int),
        "privacy_denominator": (recorded["dp_denominator"], significant),
        "privacy_gate_noise_multiplier": (recorded["gate_noise_multiplier"], significant),
        "privacy_delta": (recorded["privacy_delta"], tiny),
        "epsilon_round": (epsilon_round, partial(rounded, digits=3)),
        # The headline, named the same everywhere: every recorded round composed (PLD).
        "worst_case_learner_epsilon": (epsilon_total, partial(rounded, digits=3)),
    }
    numbers = {key: show(value) for key, (value, show) in shown.items() if value is not None}
    guarantee = "epsilon" if epsilon_total is not None else "none (released without noise)"
    return numbers | {"privacy_guarantee": guarantee}
