"""The learner-activity sensor's run split, ticked on a real temporary Dagster instance.

Learners with enough new interactions are grouped by bucket into at most two runs over ranges of
buckets (a second one per LEARNERS_PER_RUN learners); learners below the threshold or without a
model are left out; a bucket with a training run in flight waits; a run key changes only when
its learners have new activity.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from aivo_fl.defs import sensors
from aivo_fl.defs.partitions import run_bucket_span
from aivo_fl.defs.ticks import tick_sensor
from aivo_fl.ml.simulation.world import generate_learner_activity
from aivo_fl.ml.store.learner_buckets import bucket_key
from tests.defs.conftest import Deployment, ids_in_bucket

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ENOUGH = sensors.MIN_NEW_INTERACTIONS
TOO_FEW = sensors.MIN_NEW_INTERACTIONS - 1
FAR = 7


def _interact(deployment: Deployment, learner_id: str, count: int, week: int = 1) -> None:
    samples = generate_learner_activity(learner_id, 0, week, count)
    deployment.registry.add_interactions(learner_id, samples.features, samples.targets, created_at=NOW)


def _setup(deployment: Deployment, activity: dict[str, int], *, without_model: tuple[str, ...] = ()) -> None:
    for learner_id in activity:
        deployment.registry.add_learner(learner_id, baseline_completed_at=NOW)
    deployment.registry.register_personalized_models({k: {} for k in activity if k not in without_model})
    for learner_id, count in activity.items():
        _interact(deployment, learner_id, count)


def _ranges(data: dg.SensorExecutionData) -> list[tuple[int, int]]:
    spans = [run_bucket_span(r.tags) for r in data.run_requests]
    return [(span[0], span[-1]) for span in spans]


def _tick(deployment: Deployment) -> dg.SensorExecutionData:
    return tick_sensor(deployment.defs, deployment.instance, "learner_activity_sensor")


def test_ready_learners_are_grouped_by_bucket_and_the_rest_left_out(deployment: Deployment) -> None:
    a, b = ids_in_bucket(100, 2, "a")
    [c] = ids_in_bucket(102, 1, "c")
    [too_few] = ids_in_bucket(100 + FAR * 2, 1, "t")
    [no_model] = ids_in_bucket(100 + FAR * 3, 1, "n")
    [d] = ids_in_bucket(100 + FAR * 4, 1, "d")
    activity = {a: ENOUGH, b: ENOUGH + 5, c: ENOUGH, too_few: TOO_FEW, no_model: ENOUGH, d: ENOUGH}
    _setup(deployment, activity, without_model=(no_model,))

    data = _tick(deployment)

    assert _ranges(data) == [(100, 100 + FAR * 4)]  # one run: the learners left out cost no run
    assert all(r.partition_key is None for r in data.run_requests)  # ranges travel as tags


def test_more_learners_than_a_run_takes_are_two_runs(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sensors, "LEARNERS_PER_RUN", 3)
    _setup(deployment, {ids_in_bucket(bucket, 1, f"b{bucket}")[0]: ENOUGH for bucket in range(8)})
    assert _ranges(_tick(deployment)) == [(0, 3), (4, 7)]


def test_run_key_changes_only_for_runs_with_new_activity(deployment: Deployment) -> None:
    [first] = ids_in_bucket(10, 1)
    [second] = ids_in_bucket(10 + FAR * 2, 1)
    _setup(deployment, {first: ENOUGH, second: ENOUGH})
    [before] = [r.run_key for r in _tick(deployment).run_requests]
    [again] = [r.run_key for r in _tick(deployment).run_requests]
    assert again == before  # same activity: same key, so Dagster launches nothing twice

    _interact(deployment, second, 3, week=2)
    [after] = [r.run_key for r in _tick(deployment).run_requests]
    assert after != before
    assert after.startswith(f"train:{bucket_key(10)}..{bucket_key(10 + FAR * 2)}:2:")


def test_a_bucket_with_a_training_run_in_flight_waits(deployment: Deployment) -> None:
    [busy] = ids_in_bucket(50, 1)
    _setup(deployment, {busy: ENOUGH})
    [request] = _tick(deployment).run_requests
    deployment.instance.create_run_for_job(deployment.defs.resolve_job_def("train_learners"), tags=request.tags)
    waiting = _tick(deployment)
    assert waiting.run_requests == []
    assert waiting.skip_message == "1 learner(s) ready, all in buckets with a training run in flight"

    [free] = ids_in_bucket(50 + FAR, 1, "free")
    _setup(deployment, {free: ENOUGH})
    assert _ranges(_tick(deployment)) == [(50 + FAR, 50 + FAR)]


def test_nobody_ready_skips_with_a_reason(deployment: Deployment) -> None:
    _setup(deployment, {"learner-x": TOO_FEW})
    data = _tick(deployment)
    assert data.run_requests == []
    assert data.skip_message and str(sensors.MIN_NEW_INTERACTIONS) in data.skip_message


@pytest.mark.parametrize("ended", [dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE])
def test_learners_a_run_left_unfinished_are_asked_for_again(deployment: Deployment, ended: dg.DagsterRunStatus) -> None:
    # A run whose Celery worker died ends, by run monitoring, without its step's outcome.
    [learner] = ids_in_bucket(30, 1)
    _setup(deployment, {learner: ENOUGH})
    [first] = _tick(deployment).run_requests
    job = deployment.defs.resolve_job_def("train_learners")
    run = deployment.instance.create_run_for_job(job, tags=first.tags)
    instance = deployment.instance
    (instance.report_run_canceled if ended == dg.DagsterRunStatus.CANCELED else instance.report_run_failed)(run)
    [again] = _tick(deployment).run_requests
    assert again.run_key != first.run_key  # the daemon launches a key once


def test_learners_a_run_failed_are_not_retried_until_new_activity(deployment: Deployment) -> None:
    [learner] = ids_in_bucket(30, 1)
    _setup(deployment, {learner: ENOUGH})
    [first] = _tick(deployment).run_requests
    # The step ran to its end and failed (here: switched off), as a run failing its learners does.
    assert not deployment.with_settings(use_federated_learning=False).run("train_learners", tags=first.tags).success
    [again] = _tick(deployment).run_requests
    assert again.run_key == first.run_key
