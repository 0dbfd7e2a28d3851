"""One federated aggregation round per materialization: a new main version, or a recorded rejection."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field

from aivo_fl.defs.assets.learners import learner_training
from aivo_fl.defs.readable import percent, rounded
from aivo_fl.defs.resources import (
    FederatedSettingsResource,
    ModelStoreResource,
    RegistryResource,
    ReporterResource,
)
from aivo_fl.defs.retries import TRANSIENT_RETRY, fail_fast_unless_transient
from aivo_fl.ml.aggregation import DEFAULT_LEARNING_RATE, STRATEGIES
from aivo_fl.ml.federated_round import NoEligibleLearners, RoundOptions
from aivo_fl.ml.privacy import PrivacyBudgetExceeded
from aivo_fl.operations.aggregation import run_federated_aggregation
from aivo_fl.operations.run_log import appending_to

AGGREGATION_POOL = "aggregation"
# Each aggregation run is tagged with how the round ended: the UI filters on it and alerts read it.
OUTCOME_TAG = "aivo/outcome"
REFUSALS = {NoEligibleLearners: "no_eligible_learners", PrivacyBudgetExceeded: "privacy_budget_exceeded"}


class AggregationConfig(dg.Config):
    """The activation guide's aggregation options."""

    dry_run: bool = Field(False, description="compute and report the round, write nothing")
    min_learners: int = Field(3, ge=1, description="fewest usable learner updates for a round")
    strategy: str = Field("fedavg", description=f"one of {', '.join(STRATEGIES)}")
    max_stale_days: int = Field(7, ge=1, description="ignore training older than this many days")
    learning_rate: float = Field(DEFAULT_LEARNING_RATE, gt=0, description="server step on the aggregated delta")

    def round_options(self) -> RoundOptions:
        return RoundOptions(
            strategy=self.strategy,
            min_learners=self.min_learners,
            max_stale_days=self.max_stale_days,
            learning_rate=self.learning_rate,
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
    reporter: ReporterResource,
) -> Iterator[dg.MaterializeResult]:
    """The main model after aggregating the learners' deltas (DP-FedAvg), validated before promotion.

    One materialization per round, promoted or rejected. A dry run only logs what it would do.
    """
    federated_settings.require_enabled()
    report = appending_to(
        Path(reporter.aggregation_log_path),
        reporter.for_context(context),
        heading=f"-- Dagster run {context.run.run_id} (trigger: {context.run.tags.get('aivo/trigger', 'ui')})",
    )
    try:
        # Decisions and permanent errors fail at once with their one line; transient ones are retried.
        with fail_fast_unless_transient():
            outcome = run_federated_aggregation(
                registry.get_registry(),
                model_store.get_store(),
                federated_settings.privacy(),
                config.round_options(),
                report=report,
                holder=f"dagster-run:{context.run.run_id}",
            )
    except dg.Failure as failure:
        report(f"✗ {failure.description}")  # in the aggregation log; the tag is for alerts
        tag = REFUSALS.get(type(failure.__cause__), "refused")
        context.instance.add_run_tags(context.run.run_id, {OUTCOME_TAG: tag})
        raise
    s = outcome.summary()
    context.instance.add_run_tags(context.run.run_id, {OUTCOME_TAG: s["status"].lower()})
    if outcome.dry_run:
        context.log.info(f"Dry run, nothing materialized: {s}")
        return
    yield dg.MaterializeResult(
        metadata={
            "status": s["status"],
            "dry_run": s["dryRun"],
            "base_version": s["baseVersion"],
            "new_version": s["newVersion"] or "-",
            "candidate_version": s["candidateVersion"],
            "update_id": s["updateId"] or "-",
            "strategy": s["strategy"],
            "contributing_learners": len(s["contributingLearners"]),
            "excluded_learners": dg.MetadataValue.json(s["excludedLearners"]),
            "accuracy_before_pct": percent(s["accuracyBefore"]),
            "accuracy_after_pct": percent(s["accuracyAfter"]),
            "curriculum_accuracy_before_pct": percent(s["curriculumAccuracyBefore"]),
            "curriculum_accuracy_after_pct": percent(s["curriculumAccuracyAfter"]),
            "performance_improvement_points": rounded(s["performanceImprovement"], 2),
            "epsilon_round": rounded(s["epsilonRound"] or 0.0, 3),
            "epsilon_total": rounded(s["epsilonTotal"] or 0.0, 3),
            "rejection_reason": s["rejectionReason"] or "-",
        }
    )
