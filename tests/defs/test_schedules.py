"""The aggregation schedule, evaluated on a real temporary instance, with its options from settings."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from aivo_fl.config import ConfigError, load_settings
from aivo_fl.definitions import build_definitions
from aivo_fl.defs.resources import DISABLED_REASON
from tests.defs.conftest import SQLITE_ONLY, Deployment
from tests.trained import TrainedMain

SUNDAY_2AM = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def evaluate(deployment: Deployment, when: datetime) -> dg.ScheduleExecutionData:
    schedule = deployment.defs.resolve_schedule_def("weekly_aggregation_schedule")
    with dg.build_schedule_context(
        instance=deployment.instance, scheduled_execution_time=when, resources=deployment.defs.resources
    ) as context:
        return schedule.evaluate_tick(context)


@SQLITE_ONLY
def test_default_is_the_guides_weekly_round_and_runs_from_the_start(deployment: Deployment) -> None:
    schedule = deployment.defs.resolve_schedule_def("weekly_aggregation_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 2 * * 0", "UTC")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    [request] = evaluate(deployment, SUNDAY_2AM).run_requests
    assert request.run_config == {
        "ops": {"federated_main_model": {"config": {"min_learners": 3, "strategy": "fedavg", "max_stale_days": 7}}}
    }
    assert request.tags["aivo/trigger"] == "schedule"


@SQLITE_ONLY
def test_cron_and_round_options_come_from_the_environment(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, trained_main: TrainedMain
) -> None:
    for name, value in {
        "AGGREGATION_CRON": "30 3 * * 1",
        "AGGREGATION_TIMEZONE": "Europe/Berlin",
        "AGGREGATION_MIN_LEARNERS": "10",
        "AGGREGATION_STRATEGY": "weighted",
        "AGGREGATION_MAX_STALE_DAYS": "14",
        "SERVER_LEARNING_RATE": "0.05",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(
        TRAINING_EPOCHS=2,
        CURRICULUM_SAMPLES=500,
        DATABASE_URL=deployment.settings.database_url,
        AIVO_MAIN_MODEL_PATH=deployment.settings.main_model_path,
        AIVO_LEARNER_MODELS_PATH=deployment.settings.learner_models_path,
        USE_FEDERATED_LEARNING=True,
    )
    custom = Deployment(
        settings, build_definitions(settings), deployment.instance, deployment.registry, deployment.store
    )
    schedule = custom.defs.resolve_schedule_def("weekly_aggregation_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 3 * * 1", "Europe/Berlin")
    assert schedule.metadata["min_learners"].value == 10  # shown on the schedule's page in the UI

    [request] = evaluate(custom, datetime(2026, 11, 30, 3, 30, tzinfo=UTC)).run_requests
    assert request.run_config["ops"]["federated_main_model"]["config"]["strategy"] == "weighted"
    # The request really launches a round with those options: it asks for 10 learners.
    custom.with_main_version(trained_main)
    result = custom.run("federated_aggregation", run_config=request.run_config, tags=request.tags)
    assert not result.success
    run = custom.instance.get_run_by_id(result.run_id)
    # The server learning rate is not a per-run option of scheduled rounds: the settings resource has it.
    assert "learning_rate" not in run.run_config["ops"]["federated_main_model"]["config"]
    assert custom.defs.resources["federated_settings"].server_learning_rate == 0.05
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "at least 10 (min_learners)" in failures[0].step_failure_data.user_failure_data.description


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AGGREGATION_CRON", "every sunday"), ("AGGREGATION_STRATEGY", "mean"), ("AGGREGATION_MIN_LEARNERS", "0")],
)
def test_a_bad_schedule_setting_is_one_line_naming_it(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^Invalid configuration: {variable}=") as caught:
        load_settings(**{variable: value})
    assert "\n" not in str(caught.value)


@SQLITE_ONLY
def test_switched_off_the_schedule_skips_with_the_reason(deployment: Deployment) -> None:
    data = evaluate(deployment.with_settings(use_federated_learning=False), SUNDAY_2AM)
    assert data.run_requests == []
    assert data.skip_message == DISABLED_REASON


@SQLITE_ONLY
def test_aggregation_is_limited_to_one_at_a_time(deployment: Deployment) -> None:
    asset = deployment.defs.resolve_assets_def("federated_main_model")
    assert asset.op.pool == "aggregation"
    job = deployment.defs.resolve_job_def("federated_aggregation")
    assert job.tags["aivo/aggregation"] == "true"
