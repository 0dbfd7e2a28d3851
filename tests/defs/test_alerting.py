"""The run-failure alert sensor, ticked on a real instance after real failed runs, posting to 127.0.0.1."""

from __future__ import annotations

import dagster as dg
from pydantic import SecretStr

from aivo_fl.defs.resources import DISABLED_REASON
from aivo_fl.defs.ticks import tick_sensor
from tests.defs.conftest import SQLITE_ONLY, Deployment
from tests.defs.test_federated_cycle import _clone_and_train
from tests.operations.test_alerts import down_url, receiver
from tests.trained import TrainedMain

pytestmark = SQLITE_ONLY


def tick(deployment: Deployment, cursor: str | None) -> dg.SensorExecutionData:
    return tick_sensor(deployment.defs, deployment.instance, "run_failure_alert", cursor)


def test_a_failed_run_is_posted_with_its_reason_and_a_link(deployment: Deployment) -> None:
    with receiver([200]) as (url, received):
        off = deployment.with_settings(
            use_federated_learning=False,
            alert_webhook_url=SecretStr(url),
            dagster_webserver_url="https://dagster.example/",
        )
        cursor = tick(off, None).cursor  # the first tick only marks where the sensor starts
        assert received == []
        failed = off.run("federated_aggregation")
        assert not failed.success
        data = tick(off, cursor)
    assert off.defs.resolve_sensor_def("run_failure_alert").default_status == dg.DefaultSensorStatus.RUNNING
    [body] = received
    assert body["title"] == "Run of federated_aggregation failed"
    assert body["reason"] == DISABLED_REASON
    assert body["runUrl"] == f"https://dagster.example/runs/{failed.run_id}"
    assert data.skip_message is None
    tick(off, data.cursor)
    assert len(received) == 1  # each failure once


def test_a_receiver_that_is_down_does_not_fail_the_tick(deployment: Deployment) -> None:
    off = deployment.with_settings(use_federated_learning=False, alert_webhook_url=SecretStr(down_url()))
    cursor = tick(off, None).cursor
    assert not off.run("federated_aggregation").success
    data = tick(off, cursor)
    assert data.skip_message == "Alert not delivered (ConnectionRefusedError)"
    assert data.cursor != cursor  # moved on: the pipeline is never held up by the receiver


def test_empty_rounds_alert_after_the_threshold_and_a_rejected_round_alerts_at_once(
    deployment: Deployment, trained_main: TrainedMain
) -> None:
    with receiver([200]) as (url, received):
        small = deployment.with_settings(alert_webhook_url=SecretStr(url), enable_differential_privacy=False)
        small.with_main_version(trained_main)
        cursor = tick(small, None).cursor
        assert not small.run("federated_aggregation").success  # nobody trained yet
        data = tick(small, cursor)
        assert received == [] and "below the alert threshold" in data.skip_message
        assert not small.run("federated_aggregation").success
        cursor = tick(small, data.cursor).cursor
        [empty] = received
        assert empty["title"] == "No eligible learners"
        assert empty["reason"].startswith("2+ aggregation runs in a row without enough learners. Latest: No eligible")
        assert empty["versions"] == {"active": "1.0.0"}

        _clone_and_train(small)
        harmful = {"ops": {"federated_main_model": {"config": {"learning_rate": 200.0}}}}
        rejected = small.run("federated_aggregation", run_config=harmful)
        assert not rejected.success
        tick(small, cursor)
    [update] = deployment.registry.get_federated_updates()
    assert update["status"] == "REJECTED"
    body = received[1]
    assert body["title"] == "Aggregation round rejected"
    assert body["reason"] == update["rejectionReason"]
    assert body["round"] == update["updateId"]
    assert body["versions"] == {"base": "1.0.0", "candidate": "1.1.0"}
    assert body["runUrl"].endswith(f"/runs/{rejected.run_id}")
