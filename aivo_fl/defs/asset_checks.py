"""Checks on what the assets produced; each reads real results, so each can fail."""

from typing import Any

import dagster as dg

from aivo_fl.defs.assets.federated import federated_main_model
from aivo_fl.defs.assets.main_model import main_model
from aivo_fl.defs.readable import tiny
from aivo_fl.defs.resources import RegistryResource
from aivo_fl.ml.round.options import PrivacySettings
from aivo_fl.ml.round.status import RoundStatus
from aivo_fl.operations.privacy_report import HEADLINE_MEANING, privacy_summary

# The main model's test accuracy must come within this many points of the Bayes ceiling.
MAX_GAP_POINTS = 2.0


def _latest_metadata(context: dg.AssetCheckExecutionContext, asset: dg.AssetsDefinition) -> dict[str, Any] | None:
    event = context.instance.get_latest_materialization_event(asset.key)
    if event is None or event.asset_materialization is None:
        return None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@dg.asset_check(
    asset=main_model,
    description=f"test accuracy within {MAX_GAP_POINTS:g} points of the Bayes ceiling (a split that selects nothing)",
)
def main_model_near_bayes_ceiling(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    metadata = _latest_metadata(context, main_model)
    if metadata is None or "test_accuracy_pct" not in metadata:
        missing = "has not been materialized" if metadata is None else "records no test accuracy"
        return dg.AssetCheckResult(passed=False, description=f"main_model {missing}: materialize it (train_main_model)")
    accuracy, ceiling = float(metadata["test_accuracy_pct"]), float(metadata["bayes_ceiling_pct"])
    passed, description = near_ceiling(accuracy, ceiling, int(metadata["test_samples"]))
    return dg.AssetCheckResult(
        passed=passed,
        description=description,
        metadata={
            "test_accuracy_pct": accuracy,
            "bayes_ceiling_pct": ceiling,
            "gap_points": round(ceiling - accuracy, 2),
            "allowed_gap_points": MAX_GAP_POINTS,
        },
    )


def near_ceiling(accuracy_pct: float, ceiling_pct: float, samples: int) -> tuple[bool, str]:
    """Whether the test accuracy is within MAX_GAP_POINTS of the ceiling, and that in a sentence."""
    gap = round(ceiling_pct - accuracy_pct, 2)
    measured = (
        f"Test accuracy {accuracy_pct:.2f}% is {gap:.2f} points below the Bayes ceiling of {ceiling_pct:.2f}% "
        f"on the {samples:,} held-out test samples"
    )
    if gap <= MAX_GAP_POINTS:
        return True, f"{measured}, within the {MAX_GAP_POINTS:g} points allowed."
    return False, (
        f"{measured}, more than the {MAX_GAP_POINTS:g} points allowed: the model learned the curriculum worse "
        "than a well-fitted one does; see its epoch lines (best epoch, validation loss) and retrain."
    )


@dg.asset_check(
    asset=federated_main_model,
    blocking=True,
    description="the aggregated candidate did not degrade accuracy (a rejected round blocks what follows)",
)
def candidate_not_degraded(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    metadata = _latest_metadata(context, federated_main_model)
    if metadata is None:
        return dg.AssetCheckResult(passed=False, description="federated_main_model has not been materialized")
    rejected = metadata["status"] == RoundStatus.REJECTED
    figures = (
        "performance_improvement_points",
        "performance_improvement_noise_std_points",
        "curriculum_accuracy_after_pct",
    )
    return dg.AssetCheckResult(
        passed=not rejected,
        severity=dg.AssetCheckSeverity.ERROR,
        description=metadata["rejection_reason"] if rejected else f"{metadata['status']}: no degradation",
        metadata={key: float(metadata[key]) for key in figures if key in metadata}
        | {"learner_figures": str(metadata.get("learner_figures", "-"))},
    )


@dg.asset_check(
    asset=federated_main_model,
    description="worst-case learner epsilon within PRIVACY_EPSILON_BUDGET and the meaningful range (epsilon <= 10)",
)
def privacy_budget_not_exceeded(
    context: dg.AssetCheckExecutionContext,
    registry: RegistryResource,
    privacy: dg.ResourceParam[PrivacySettings],
) -> dg.AssetCheckResult:
    """Reads the recorded ledger: every round as it really ran, a round without noise as "no guarantee".

    Over the budget: ERROR. Beyond the meaningful range, no guarantee, or no budget set: a WARN
    result with the reason (and a WARNING log line), so the check is never green for nothing."""
    summary = privacy_summary(
        registry.get_registry(),
        enabled=privacy.enabled,
        delta=privacy.delta,
        epsilon_budget=privacy.epsilon_budget,
        learner_epsilon_budget=privacy.learner_epsilon_budget,
    )
    passed, severity, description = privacy_verdict(summary)
    if severity == dg.AssetCheckSeverity.WARN and not passed:
        context.log.warning(f"Privacy: {description}")
    headline = summary["worstCaseLearnerEpsilon"]
    budget = summary["epsilonBudget"]
    return dg.AssetCheckResult(
        passed=passed,
        severity=severity,
        description=description,
        metadata={
            "worst_case_learner_epsilon": "no guarantee" if headline is None else round(headline, 3),
            "worst_case_learner_epsilon_means": HEADLINE_MEANING,
            "epsilon_budget": budget if budget is not None else "none",
            "reason": description,
            "recorded_rounds": summary["rounds"],
            "noised_rounds": summary["noisedRounds"],
            "accountant": "PLD (dp-accounting)",
            "delta": tiny(summary["delta"]),
        },
    )


def privacy_verdict(summary: dict[str, Any]) -> tuple[bool, dg.AssetCheckSeverity, str]:
    """(passed, severity, description) of the privacy check from the recomposed ledger."""
    headline = summary["worstCaseLearnerEpsilon"]
    shown = "no guarantee" if headline is None else f"{headline:.3g}"
    if summary["overBudget"]:
        budget = summary["epsilonBudget"]
        return False, dg.AssetCheckSeverity.ERROR, f"worst-case learner epsilon {shown} is past the budget {budget:g}"
    if summary["warning"]:
        return False, dg.AssetCheckSeverity.WARN, summary["warning"]
    return True, dg.AssetCheckSeverity.WARN, f"worst-case learner epsilon {shown}, within the budget"
