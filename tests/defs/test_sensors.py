"""The new-learner sensor, ticked on a real temporary instance: a couple of runs over ranges of learner buckets."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg
import pytest
import sqlalchemy as sa

from aivo_fl.defs import sensors
from aivo_fl.defs.partitions import EVERY_BUCKET, run_bucket_span
from aivo_fl.defs.resources import DISABLED_REASON
from aivo_fl.defs.run_tags import BUCKETS_TAG
from aivo_fl.defs.ticks import tick_sensor
from aivo_fl.ml.store.learner_buckets import bucket_key, bucket_of
from aivo_fl.registry.schema import Learner
from tests.defs.conftest import Deployment, ids_in_bucket

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def tick(deployment: Deployment, name: str, cursor: str | None = None) -> dg.SensorExecutionData:
    return tick_sensor(deployment.defs, deployment.instance, name, cursor)


def ranges(data: dg.SensorExecutionData) -> list[tuple[str, str]]:
    spans = [run_bucket_span(r.tags) for r in data.run_requests]
    return [(bucket_key(span[0]), bucket_key(span[-1])) for span in spans]


def add(deployment: Deployment, ids: list[str]) -> list[str]:
    for learner_id in ids:
        deployment.registry.add_learner(learner_id, baseline_completed_at=NOW)
    return ids


def add_learners(deployment: Deployment, count: int, prefix: str = "learner") -> list[str]:
    return add(deployment, [f"{prefix}-{i:05d}" for i in range(count)])


def test_no_new_learners_skips(deployment: Deployment) -> None:
    data = tick(deployment, "new_learner_sensor")
    assert data.run_requests == []
    assert data.skip_message == "No new learners"


def test_one_new_learner_one_run_over_its_bucket(deployment: Deployment) -> None:
    [learner] = add_learners(deployment, 1)
    deployment.registry.add_learner("no-baseline-yet", baseline_completed_at=None)
    [request] = tick(deployment, "new_learner_sensor").run_requests
    assert request.tags[BUCKETS_TAG] == bucket_key(bucket_of(learner)) and request.partition_key is None
    assert learner not in json.dumps(request.tags) and learner not in request.run_key  # no learner id in Dagster


def test_scattered_learners_are_one_run_over_their_span(deployment: Deployment) -> None:
    ids = add(deployment, ids_in_bucket(10, 2) + ids_in_bucket(500, 1, "m") + ids_in_bucket(1000, 3, "z"))
    [request] = tick(deployment, "new_learner_sensor").run_requests
    assert request.tags[BUCKETS_TAG] == "bucket-0010..bucket-1000"
    assert request.run_key.startswith(f"clone:bucket-0010..bucket-1000:{len(ids)}:")


def test_a_tick_asks_for_two_runs_at_most_balanced_by_learners(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sensors, "LEARNERS_PER_RUN", 2)
    for bucket in range(10):
        add(deployment, ids_in_bucket(bucket * 3, 1, prefix=f"b{bucket}"))
    assert ranges(tick(deployment, "new_learner_sensor")) == [
        (bucket_key(0), bucket_key(12)),
        (bucket_key(15), bucket_key(27)),
    ]


def test_thousands_of_learners_are_two_runs_over_every_bucket(deployment: Deployment) -> None:
    with deployment.registry.engine.begin() as conn:
        conn.execute(
            sa.insert(Learner),
            [{"id": f"learner-{i:05d}", "baselineCompletedAt": NOW, "createdAt": NOW} for i in range(5_000)],
        )
    first, second = [run_bucket_span(r.tags) for r in tick(deployment, "new_learner_sensor").run_requests]
    assert (first.start, first.stop, second.stop) == (0, second.start, len(EVERY_BUCKET))
    assert 400 < len(first) < 624  # about as many learners in each half


def test_a_range_never_spans_a_bucket_with_a_run_in_flight(deployment: Deployment) -> None:
    job = deployment.defs.resolve_job_def("clone_learners")
    deployment.instance.create_run_for_job(job, tags={BUCKETS_TAG: "bucket-0400..bucket-0410"})
    add(deployment, ids_in_bucket(100, 1) + ids_in_bucket(300, 1, "m") + ids_in_bucket(405, 1, "w"))
    add(deployment, ids_in_bucket(700, 2, "z"))
    data = tick(deployment, "new_learner_sensor")
    assert ranges(data) == [(bucket_key(100), bucket_key(300)), (bucket_key(700), bucket_key(700))]


def test_asked_again_with_the_same_key_and_not_at_all_while_a_run_is_in_flight(deployment: Deployment) -> None:
    [learner] = add_learners(deployment, 1)
    [first] = tick(deployment, "new_learner_sensor").run_requests
    [again] = tick(deployment, "new_learner_sensor").run_requests
    assert again.run_key == first.run_key  # not launched yet: the daemon drops the repeated key

    # The daemon launched it: while it is queued or running, its bucket is not asked for.
    job = deployment.defs.resolve_job_def("clone_learners")
    run = deployment.instance.create_run_for_job(job, tags=first.tags)
    assert run.status == dg.DagsterRunStatus.NOT_STARTED
    waiting = tick(deployment, "new_learner_sensor")
    assert waiting.run_requests == []
    assert waiting.skip_message == "No new learners (1 waiting for a cloning run in flight)"

    # A learner in another bucket is asked for at once.
    other = bucket_of(learner) + 100 if bucket_of(learner) < 900 else bucket_of(learner) - 100
    add(deployment, ids_in_bucket(other, 1, prefix="late"))
    assert ranges(tick(deployment, "new_learner_sensor")) == [(bucket_key(other), bucket_key(other))]


def test_cursor_pages_a_backlog_larger_than_one_scan(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sensors, "SCAN_LIMIT", 40)
    learners = add_learners(deployment, 100)
    cursors = []
    cursor = None
    for _ in range(3):
        data = tick(deployment, "new_learner_sensor", cursor=cursor)
        assert data.run_requests
        cursor = data.cursor
        cursors.append(cursor)
    # Two full pages, then the end of the backlog: the next scan starts from the beginning again.
    assert [json.loads(c)["after"] for c in cursors] == [learners[39], learners[79], None]


def test_path_like_learner_ids_are_never_asked_for(deployment: Deployment) -> None:
    # The registry refuses such ids; rows the AIVO app wrote straight into "Learner" still reach the sensor.
    with deployment.registry.engine.begin() as conn:
        for bad in ("../../etc", "a/b", ".hidden"):
            conn.execute(sa.insert(Learner).values(id=bad, baselineCompletedAt=NOW, createdAt=NOW))
    assert tick(deployment, "new_learner_sensor").skip_message == "No new learners (3 refused ids)"
    [good] = add_learners(deployment, 1)
    assert ranges(tick(deployment, "new_learner_sensor")) == [(bucket_key(bucket_of(good)),) * 2]


def test_switched_off_everything_skips_with_the_reason(deployment: Deployment) -> None:
    off = deployment.with_settings(use_federated_learning=False)
    add_learners(off, 3)
    for name in ("new_learner_sensor", "learner_activity_sensor"):
        data = tick(off, name)
        assert data.run_requests == []
        assert data.skip_message == DISABLED_REASON


def test_the_buckets_a_run_covers_old_and_new() -> None:
    ranged = dg.DagsterRun(job_name="clone_learners", tags={BUCKETS_TAG: "bucket-0003..bucket-0005"})
    assert list(sensors.run_buckets(ranged)) == [3, 4, 5]
    assert sensors.run_buckets(dg.DagsterRun(job_name="clone_learners")) == EVERY_BUCKET  # the UI's Materialize
    garbled = dg.DagsterRun(job_name="clone_learners", tags={BUCKETS_TAG: "bucket-0005..bucket-0003"})
    assert sensors.run_buckets(garbled) == range(0)
    # An instance upgraded from per-learner partitions still holds runs whose range tags are learner ids.
    old = dg.DagsterRun(job_name="clone_learners", tags={sensors.RANGE_START: "learner-1", sensors.RANGE_END: "x-2"})
    assert sensors.run_buckets(old) == range(0)
    one = dg.DagsterRun(job_name="clone_learners", tags={sensors.PARTITION: bucket_key(7)})
    assert sensors.run_buckets(one) == range(7, 8)
    span = dg.DagsterRun(
        job_name="clone_learners", tags={sensors.RANGE_START: "bucket-0003", sensors.RANGE_END: "bucket-0005"}
    )
    assert list(sensors.run_buckets(span)) == [3, 4, 5]
