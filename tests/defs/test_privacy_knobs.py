"""Privacy checks that warn, and privacy knobs that no run config can change."""

from __future__ import annotations

import dagster as dg
import pytest

from aivo_fl.defs.asset_checks import privacy_verdict
from aivo_fl.ml.round.options import PrivacySettings
from tests.defs.conftest import SQLITE_ONLY, Deployment


def _summary(epsilon: float | None, budget: float | None, warning: str | None) -> dict[str, object]:
    over = budget is not None and (epsilon is None or epsilon > budget)
    return {"worstCaseLearnerEpsilon": epsilon, "epsilonBudget": budget, "overBudget": over, "warning": warning}


def test_the_privacy_check_warns_and_errs_for_what_is_true() -> None:
    from aivo_fl.operations.privacy_report import summary_warning

    def verdict(epsilon: float | None, budget: float | None) -> tuple[bool, dg.AssetCheckSeverity, str]:
        figures = {
            "noGuarantee": None if epsilon else "1 round(s) released without noise",
            "rounds": 3,
            "worstCaseLearnerEpsilon": epsilon,
            "delta": 1e-6,
        }
        return privacy_verdict(_summary(epsilon, budget, summary_warning(figures, budget)))

    assert verdict(1.5, 2.0) == (True, dg.AssetCheckSeverity.WARN, "worst-case learner epsilon 1.5, within the budget")
    passed, severity, reason = verdict(231.0, None)  # the demo's figure: far too large, and no budget
    assert (passed, severity) == (False, dg.AssetCheckSeverity.WARN) and "far too large" in reason
    passed, severity, reason = verdict(1.5, None)
    assert (passed, severity) == (False, dg.AssetCheckSeverity.WARN) and reason.startswith("No budget set")
    passed, severity, reason = verdict(2.5, 2.0)
    assert (passed, severity) == (False, dg.AssetCheckSeverity.ERROR) and "past the budget 2" in reason
    assert verdict(None, None)[:2] == (False, dg.AssetCheckSeverity.WARN)


@SQLITE_ONLY
def test_privacy_knobs_cannot_be_changed_from_run_config(deployment: Deployment) -> None:
    """The launchpad and `dagster job execute` send run config; the privacy resource has none."""
    job = deployment.defs.resolve_job_def("federated_aggregation")
    knobs = {"resources": {"privacy": {"config": {"enable_differential_privacy": False, "noise_multiplier": 0.0}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="privacy"):
        job.execute_in_process(run_config=knobs, instance=deployment.instance)
    # The old way in, through the settings resource, is gone too ...
    old = {"resources": {"federated_settings": {"config": {"noise_multiplier": 0.0}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="noise_multiplier"):
        job.execute_in_process(run_config=old, instance=deployment.instance)
    # ... while the round's own options stay editable.
    ops = job.run_config_schema.config_type.fields["ops"].config_type.fields
    editable = ops["federated_main_model"].config_type.fields["config"].config_type.fields
    assert {"dry_run", "min_learners", "strategy", "learning_rate"} <= set(editable)
    # What the asset gets is the deployment's, from its settings.
    privacy = deployment.defs.resources["privacy"]
    assert isinstance(privacy, dg.ResourceDefinition)
    built = dg.build_resources({"privacy": privacy})
    with built as resources:
        assert resources.privacy == deployment.settings.privacy()
        assert isinstance(resources.privacy, PrivacySettings)
