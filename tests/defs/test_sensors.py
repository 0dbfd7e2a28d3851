"""The sensors, ticked on a real temporary instance, with partition requests applied as the daemon would."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg
import pytest
import sqlalchemy as sa

from aivo_fl.defs import sensors
from aivo_fl.defs.partitions import learner_partitions
from aivo_fl.defs.resources import DISABLED_REASON
from aivo_fl.defs.ticks import tick_sensor
from aivo_fl.registry.schema import Learner
from tests.defs.conftest import Deployment

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def tick(deployment: Deployment, name: str, cursor: str | None = None) -> dg.SensorExecutionData:
    return tick_sensor(deployment.defs, deployment.instance, name, cursor)


def partitions(deployment: Deployment) -> list[str]:
    return list(deployment.instance.get_dynamic_partitions(learner_partitions.name))


def add_learners(deployment: Deployment, count: int, prefix: str = "learner") -> list[str]:
    ids = [f"{prefix}-{i:05d}" for i in range(count)]
    for learner_id in ids:
        deployment.registry.add_learner(learner_id, baseline_completed_at=NOW)
    return ids


def test_no_new_learners_skips(deployment: Deployment) -> None:
    data = tick(deployment, "new_learner_sensor")
    assert data.run_requests == []
    assert data.skip_message == "No new learners"
    assert partitions(deployment) == []


def test_one_new_learner_one_run(deployment: Deployment) -> None:
    [learner] = add_learners(deployment, 1)
    deployment.registry.add_learner("no-baseline-yet", baseline_completed_at=None)
    data = tick(deployment, "new_learner_sensor")
    assert partitions(deployment) == [learner]
    [request] = data.run_requests
    assert request.tags[sensors.RANGE_START] == request.tags[sensors.RANGE_END] == learner


def test_many_new_learners_are_batched_and_never_requested_twice(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sensors, "PARTITIONS_PER_RUN", 100)
    learners = add_learners(deployment, 250)
    data = tick(deployment, "new_learner_sensor")
    assert partitions(deployment) == learners
    ranges = [(r.tags[sensors.RANGE_START], r.tags[sensors.RANGE_END]) for r in data.run_requests]
    assert ranges == [(learners[0], learners[99]), (learners[100], learners[199]), (learners[200], learners[249])]
    assert len({r.run_key for r in data.run_requests}) == 3

    again = tick(deployment, "new_learner_sensor", cursor=data.cursor)
    assert again.run_requests == []
    assert partitions(deployment) == learners  # no duplicates

    late = add_learners(deployment, 2, prefix="late")
    third = tick(deployment, "new_learner_sensor", cursor=again.cursor)
    assert [(r.tags[sensors.RANGE_START], r.tags[sensors.RANGE_END]) for r in third.run_requests] == [
        (late[0], late[1])
    ]
    assert partitions(deployment) == learners + late


def test_cursor_pages_a_backlog_larger_than_one_scan(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sensors, "SCAN_LIMIT", 40)
    learners = add_learners(deployment, 100)
    cursors = []
    cursor = None
    for _ in range(3):
        data = tick(deployment, "new_learner_sensor", cursor=cursor)
        cursor = data.cursor
        cursors.append(cursor)
    assert partitions(deployment) == learners
    # Two full pages, then the end of the backlog: the next scan starts from the beginning again.
    assert [json.loads(c)["after"] for c in cursors] == [learners[39], learners[79], None]


def test_path_like_learner_ids_never_become_partitions(deployment: Deployment) -> None:
    # The registry refuses such ids; rows the AIVO app wrote straight into "Learner" still reach the sensor.
    with deployment.registry.engine.begin() as conn:
        for bad in ("../../etc", "a/b", ".hidden"):
            conn.execute(sa.insert(Learner).values(id=bad, baselineCompletedAt=NOW, createdAt=NOW))
    [good] = add_learners(deployment, 1)
    data = tick(deployment, "new_learner_sensor")
    assert partitions(deployment) == [good]
    assert len(data.run_requests) == 1


def test_switched_off_everything_skips_with_the_reason(deployment: Deployment) -> None:
    off = deployment.with_settings(use_federated_learning=False)
    add_learners(off, 3)
    for name in ("new_learner_sensor", "learner_activity_sensor"):
        data = tick(off, name)
        assert data.run_requests == []
        assert data.skip_message == DISABLED_REASON
    assert partitions(off) == []
