"""The asset graph materialized end to end on a temporary instance, against SQLite and PostgreSQL."""

from __future__ import annotations

import dagster as dg

from aivo_fl.defs.readable import significant, tiny
from aivo_fl.defs.resources import DISABLED_REASON
from aivo_fl.defs.run_tags import BUCKETS_TAG, OUTCOME_TAG, RUN_TAG, VERSIONS_TAG, RunKind
from aivo_fl.ml.store.learner_buckets import bucket_of
from aivo_fl.operations.app_simulation import simulate_activity, simulate_new_learners
from aivo_fl.registry.schema import ModelVersionStatus
from tests.defs.conftest import SQLITE_ONLY, Deployment
from tests.defs.test_sensors import tick
from tests.trained import TrainedMain

LEARNERS = 20


def _check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def run_requested(deployment: Deployment, sensor: str, job: str, asset: str) -> list[dg.AssetMaterialization]:
    """Tick the sensor, execute every run it asks for; the runs' materializations (one per run)."""
    data = tick(deployment, sensor)
    assert data.run_requests, data.skip_message
    materializations = []
    for request in data.run_requests:
        result = deployment.run(job, tags=request.tags)
        assert result.success
        materializations += result.asset_materializations_for_node(asset)
        # The run says what it is and which buckets it covered, first in its (key-sorted) tags.
        tags = deployment.instance.get_run_by_id(result.run_id).tags
        kind = {"clone_learners": RunKind.CLONING, "train_learners": RunKind.TRAINING}[job]
        assert tags[RUN_TAG] == kind and tags[BUCKETS_TAG] == request.tags[BUCKETS_TAG]
    return materializations


def _active_version(deployment: Deployment) -> dict[str, object]:
    """The latest materialization of `active_main_version`, as the UI shows it."""
    event = deployment.instance.get_latest_materialization_event(dg.AssetKey("active_main_version"))
    assert event is not None and event.asset_materialization is not None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _clone_and_train(deployment: Deployment) -> tuple[list[str], list[dg.AssetMaterialization]]:
    learners = simulate_new_learners(deployment.registry, LEARNERS)
    cloned = run_requested(deployment, "new_learner_sensor", "clone_learners", "learner_models")
    run_requested(deployment, "learner_activity_sensor", "train_learners", "learner_training")
    return learners, cloned


def _counts(materializations: list[dg.AssetMaterialization], verb: str) -> tuple[int, int]:
    """Learners handled and buckets where somebody was, over the runs (one materialization each)."""
    assert all(m.partition is None for m in materializations)
    return sum(m.metadata[verb].value for m in materializations), sum(
        m.metadata["buckets_handled"].value for m in materializations
    )


def _buckets(learners: list[str]) -> tuple[int, int]:
    return len(learners), len({bucket_of(learner) for learner in learners})


def test_whole_cycle_materializes_and_records_everything(deployment: Deployment) -> None:
    main = deployment.run("train_main_model")
    assert main.success
    [materialization] = main.asset_materializations_for_node("main_model")
    assert materialization.metadata["version"].value == "1.0.0"
    # Readable in the UI: 65.65 (percent, two decimals), not 0.656499981880188.
    accuracy = materialization.metadata["validation_accuracy_pct"].value
    assert 1 < accuracy <= 100 and round(accuracy, 2) == accuracy
    assert _check(main, "main_model_near_bayes_ceiling").metadata["bayes_ceiling_pct"].value > 1
    # The version serving learners, on its own asset: trained, the only one in its lineage.
    active = _active_version(deployment)
    assert (active["version"], active["produced_by"], active["base_version"]) == (
        "1.0.0",
        "trained on the curriculum",
        "-",
    )
    assert "| **1.0.0** (active) |" in active["lineage"]
    assert deployment.instance.get_run_by_id(main.run_id).tags[RUN_TAG] == RunKind.MAIN_MODEL

    learners, cloned = _clone_and_train(deployment)
    # One materialization per run, counting exactly the learners and buckets it handled.
    assert _counts(cloned, "cloned") == _buckets(learners)
    assert all(m.metadata["failed"].value == 0 and m.metadata["failures_by_reason"].value == {} for m in cloned)
    assert {m.metadata["source_version"].value for m in cloned if m.metadata["cloned"].value} == {"1.0.0"}
    record = deployment.registry.get_personalized_model(learners[0])
    assert record is not None
    assert record.metadata["federatedLearning"] is True
    assert record.metadata["sourceVersion"] == "1.0.0"
    assert (
        record.metadata["architecture"]["frozenLayers"] + record.metadata["architecture"]["trainableLayers"]
        == (record.metadata["architecture"]["totalLayers"])
    )
    # Nothing new to learn from yet: the activity sensor has nothing to do.
    assert tick(deployment, "learner_activity_sensor").run_requests == []

    first = deployment.run("federated_aggregation")
    assert first.success
    [update] = first.asset_materializations_for_node("federated_main_model")
    assert update.metadata["status"].value == "PROMOTED"
    assert update.metadata["new_version"].value == "1.1.0"
    # DP is on (the guide's z = 0.1): the draw is not released, the headline epsilon is.
    assert update.metadata["contributing_learners"].value == "withheld (DP)"
    assert update.metadata["worst_case_learner_epsilon"].value > 0
    # What the round's accounting used, as numbers the UI plots; the same figures the registry recorded.
    [recorded] = deployment.registry.round_privacy_records()
    # Measured figures to four significant digits, the tiny delta as text ("1e-06", not "1.0000000E-6").
    for key, field, shown in (
        ("privacy_noise_multiplier", "noiseMultiplier", float),
        ("privacy_clip_norm", "clipNorm", significant),
        ("privacy_sample_rate", "sampleRate", float),
        ("privacy_eligible_learners", "eligiblePopulation", int),
        ("privacy_denominator", "denominator", significant),
        ("privacy_delta", "delta", tiny),
    ):
        assert update.metadata[key].value == shown(recorded["privacy"][field]), key
    assert recorded["privacy"]["eligiblePopulation"] == LEARNERS
    assert "accuracy_before_pct" not in update.metadata  # exact learner figures: DP off only
    assert update.metadata["learner_figures"].value.startswith("privatized")
    for key in ("performance_improvement_points", "performance_improvement_noise_std_points"):
        assert round(update.metadata[key].value, 3) == update.metadata[key].value
    assert _check(first, "candidate_not_degraded").passed
    # epsilon far beyond the meaningful range, and no budget: a warning, never a green check
    privacy = _check(first, "privacy_budget_not_exceeded")
    assert not privacy.passed and privacy.severity == dg.AssetCheckSeverity.WARN
    assert "far too large" in privacy.description
    # The round's report: this round, its figures and exclusions, a picture; no learner named.
    report = update.metadata["round_report"].value
    assert report.startswith("### Round 1: promoted 1.0.0 -> 1.1.0") and "data:image/png;base64," in report
    assert "| learners | drawn: withheld (differential privacy), 0 left out before the draw |" in report
    assert not any(learner in report for learner in learners)
    tags = deployment.instance.get_run_by_id(first.run_id).tags
    assert (tags[RUN_TAG], tags[OUTCOME_TAG], tags[VERSIONS_TAG]) == (RunKind.ROUND, "promoted", "1.0.0 -> 1.1.0")
    active = _active_version(deployment)
    assert (active["version"], active["base_version"]) == ("1.1.0", "1.0.0")
    assert str(active["produced_by"]).startswith("round 1 (fu-")
    assert active["serving_since"] > 0 and active["rounds_recorded"] == 1

    # A week later: new activity -> retraining (rebased onto 1.1.0) -> a second round.
    simulate_activity(deployment.registry, learners, week=2)
    trained = run_requested(deployment, "learner_activity_sensor", "train_learners", "learner_training")
    assert _counts(trained, "trained") == _buckets(learners)
    assert sum(m.metadata["rebased"].value for m in trained) == LEARNERS
    assert {m.metadata["source_version"].value for m in trained if m.metadata["trained"].value} == {"1.1.0"}
    # Whether a second round of this small cohort passes the cumulative curriculum guard is a
    # question of learning (tests/ml); here a negligible server step makes it promote for certain,
    # and the learning rate reaches the round from the run config.
    second = deployment.run(
        "federated_aggregation", run_config={"ops": {"federated_main_model": {"config": {"learning_rate": 1e-6}}}}
    )
    assert second.success
    [update] = second.asset_materializations_for_node("federated_main_model")
    assert update.metadata["server_learning_rate"].value == 1e-6
    # The private gate decides on noised figures: even a negligible step may be halved by the noise.
    assert update.metadata["server_step_scale"].value in (1.0, 0.5, 0.25, 0.125)

    stats = deployment.registry.get_statistics()
    assert stats == {
        "totalMainVersions": 3,
        "totalLearnerModels": LEARNERS,
        "activeLearnerModels": LEARNERS,
        "totalFederatedUpdates": 2,
        "totalTrainingSessions": 2 * LEARNERS,
    }
    assert deployment.registry.get_active_version().version == "1.2.0"
    active = _active_version(deployment)
    assert active["version"] == "1.2.0" and str(active["produced_by"]).startswith("round 2 (fu-")
    assert [line.split(" | ")[0] for line in str(active["lineage"]).splitlines()[2:]] == [
        "| 1.0.0",
        "| 1.1.0",
        "| **1.2.0** (active)",
    ]
    # The guide's "review logs": both rounds, with their run ids, in logs/aggregation.log.
    log = deployment.settings.aggregation_log_path.read_text()
    assert log.count("=== Federated Aggregation ===") == 2 and f"-- Dagster run {first.run_id}" in log


@SQLITE_ONLY
def test_a_second_round_without_new_training_has_no_eligible_learners(
    deployment: Deployment, trained_main: TrainedMain
) -> None:
    deployment.with_main_version(trained_main)
    _clone_and_train(deployment)
    assert deployment.run("federated_aggregation").success
    again = deployment.run("federated_aggregation")
    assert not again.success
    failure = next(e for e in again.all_events if e.event_type_value == "STEP_FAILURE")
    assert "No eligible learners" in failure.step_failure_data.user_failure_data.description
    assert len(deployment.registry.get_federated_updates()) == 1
    assert (
        deployment.settings.aggregation_log_path.read_text()
        .splitlines()[-1]
        .endswith(failure.step_failure_data.user_failure_data.description)
    )


@SQLITE_ONLY
def test_degradation_check_blocks_a_harmful_round(deployment: Deployment, trained_main: TrainedMain) -> None:
    deployment.with_main_version(trained_main)
    _clone_and_train(deployment)
    harmful = {"ops": {"federated_main_model": {"config": {"learning_rate": 200.0}}}}
    result = deployment.with_settings(enable_differential_privacy=False).run(
        "federated_aggregation", run_config=harmful
    )
    assert not result.success  # the blocking check fails the run
    check = _check(result, "candidate_not_degraded")
    assert not check.passed
    assert "Performance degradation" in check.description
    [update] = deployment.registry.get_federated_updates()
    assert update["status"] == "REJECTED"
    assert update["rejectionReason"].startswith("Performance degradation")
    statuses = {v.version: v.status for v in deployment.registry.list_main_versions()}
    assert statuses == {"1.0.0": ModelVersionStatus.ACTIVE, "1.1.0": ModelVersionStatus.REJECTED}
    assert not (deployment.store.main_root / "1.1.0").exists()
    # The rejection is reported and tagged; 1.0.0 still serves, as its own asset says.
    [materialization] = result.asset_materializations_for_node("federated_main_model")
    assert materialization.metadata["round_report"].value.startswith("### Round 1: rejected, 1.0.0 stays active")
    tags = deployment.instance.get_run_by_id(result.run_id).tags
    assert (tags[OUTCOME_TAG], tags[VERSIONS_TAG]) == ("rejected", "1.0.0 kept")
    assert _active_version(deployment)["version"] == "1.0.0"


@SQLITE_ONLY
def test_switched_off_federated_assets_fail_with_the_reason(deployment: Deployment, trained_main: TrainedMain) -> None:
    deployment.with_main_version(trained_main)  # training the main model comes before activation
    off = deployment.with_settings(use_federated_learning=False)
    result = off.run("federated_aggregation")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_failure_data.user_failure_data.description == DISABLED_REASON
    assert deployment.registry.get_federated_updates() == []


@SQLITE_ONLY
def test_dry_run_changes_nothing(deployment: Deployment, trained_main: TrainedMain) -> None:
    deployment.with_main_version(trained_main)
    _clone_and_train(deployment)
    store_before = sorted(p.relative_to(deployment.store.main_root) for p in deployment.store.main_root.rglob("*"))
    result = deployment.run(
        "federated_aggregation", run_config={"ops": {"federated_main_model": {"config": {"dry_run": True}}}}
    )
    assert result.success
    assert result.asset_materializations_for_node("federated_main_model") == []
    assert deployment.registry.get_federated_updates() == []
    assert [v.version for v in deployment.registry.list_main_versions()] == ["1.0.0"]
    assert sorted(p.relative_to(deployment.store.main_root) for p in deployment.store.main_root.rglob("*")) == (
        store_before
    )
    assert deployment.registry.round_privacy_records() == []
    # Nothing changed, so the active version's asset was not materialized again.
    key = dg.AssetKey("active_main_version")
    assert deployment.instance.get_latest_materialization_event(key).run_id != result.run_id
