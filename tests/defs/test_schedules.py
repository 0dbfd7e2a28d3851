"""The weekly aggregation schedule, evaluated on a real temporary instance."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
from dagster._utils.schedules import cron_string_iterator

from aivo_fl.defs.resources import DISABLED_REASON
from tests.defs.conftest import Deployment

SUNDAY_2AM = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def evaluate(deployment: Deployment, when: datetime) -> dg.ScheduleExecutionData:
    schedule = deployment.defs.resolve_schedule_def("weekly_aggregation_schedule")
    with dg.build_schedule_context(
        instance=deployment.instance, scheduled_execution_time=when, resources=deployment.defs.resources
    ) as context:
        return schedule.evaluate_tick(context)


def test_sunday_two_am_tick_requests_one_aggregation_run(deployment: Deployment) -> None:
    schedule = deployment.defs.resolve_schedule_def("weekly_aggregation_schedule")
    assert schedule.cron_schedule == "0 2 * * 0"
    assert schedule.job_name == "federated_aggregation"
    assert schedule.execution_timezone == "UTC"
    data = evaluate(deployment, SUNDAY_2AM)
    [request] = data.run_requests
    assert request.tags["aivo/trigger"] == "weekly_schedule"
    # From a Saturday evening, the next ticks are Sundays at 02:00.
    ticks = cron_string_iterator(datetime(2026, 11, 28, 20, 0, tzinfo=UTC).timestamp(), "0 2 * * 0", "UTC")
    assert [next(ticks) for _ in range(2)] == [SUNDAY_2AM, datetime(2026, 12, 6, 2, 0, tzinfo=UTC)]


def test_time_zone_comes_from_the_settings(deployment: Deployment) -> None:
    berlin = deployment.with_settings(aggregation_timezone="Europe/Berlin")
    assert berlin.defs.resolve_schedule_def("weekly_aggregation_schedule").execution_timezone == "Europe/Berlin"


def test_switched_off_the_schedule_skips_with_the_reason(deployment: Deployment) -> None:
    data = evaluate(deployment.with_settings(use_federated_learning=False), SUNDAY_2AM)
    assert data.run_requests == []
    assert data.skip_message == DISABLED_REASON


def test_aggregation_is_limited_to_one_at_a_time(deployment: Deployment) -> None:
    asset = deployment.defs.resolve_assets_def("federated_main_model")
    assert asset.op.pool == "aggregation"
    job = deployment.defs.resolve_job_def("federated_aggregation")
    assert job.tags["aivo/aggregation"] == "true"
