"""Learners left without a model by a failed or killed cloning run are asked for again, boundedly."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aivo_fl.defs import sensors
from aivo_fl.defs.ticks import tick_sensor
from tests.defs.conftest import Deployment

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def trained(deployment: Deployment) -> Deployment:
    small = deployment.with_settings(training_epochs=3, curriculum_samples=500)
    assert small.run("train_main_model").success
    return small


def _learners(d: Deployment, count: int) -> list[str]:
    ids = [f"learner-{i:05d}" for i in range(count)]
    for learner_id in ids:
        d.registry.add_learner(learner_id, baseline_completed_at=NOW)
    return ids


def _with_model(d: Deployment, ids: list[str]) -> list[str]:
    return [k for k in ids if d.registry.get_personalized_model(k) is not None]


def test_one_bad_file_fails_that_learner_only_and_it_is_asked_for_again(trained: Deployment) -> None:
    d = trained
    ids = _learners(d, 3)
    [request] = tick_sensor(d.defs, d.instance, "new_learner_sensor").run_requests
    # Something that is not a clone sits where learner-00001's folder goes.
    d.store.learners_root.mkdir(parents=True, exist_ok=True)
    (d.store.learners_root / ids[1]).write_bytes(b"not a clone")
    first = d.run("clone_learners", tags=request.tags)
    assert not first.success
    assert _with_model(d, ids) == [ids[0], ids[2]]  # the batch went on

    retry = tick_sensor(d.defs, d.instance, "new_learner_sensor")
    [again] = retry.run_requests
    assert again.tags[sensors.RANGE_START] == again.tags[sensors.RANGE_END] == ids[1]
    assert d.run("clone_learners", tags=again.tags).success
    assert _with_model(d, ids) == ids
    assert tick_sensor(d.defs, d.instance, "new_learner_sensor").skip_message == "No new learners"


def test_retries_are_bounded_and_the_reason_is_visible(trained: Deployment) -> None:
    d = trained
    ids = _learners(d, 2)
    first = tick_sensor(d.defs, d.instance, "new_learner_sensor")
    # The cloning run ends without cloning anybody (switched off: it fails with that reason).
    off = d.with_settings(use_federated_learning=False)
    assert not off.run("clone_learners", tags=first.run_requests[0].tags).success

    cursor, run_keys = first.cursor, [first.run_requests[0].run_key]
    for _ in range(sensors.MAX_CLONE_ATTEMPTS):
        data = tick_sensor(d.defs, d.instance, "new_learner_sensor", cursor)
        cursor = data.cursor
        [request] = data.run_requests  # both learners, one range run
        assert (request.tags[sensors.RANGE_START], request.tags[sensors.RANGE_END]) == (ids[0], ids[1])
        run_keys.append(request.run_key)
    assert len(set(run_keys)) == len(run_keys)  # a fresh run key each time, or the daemon would drop it
    given_up = tick_sensor(d.defs, d.instance, "new_learner_sensor", cursor)
    assert given_up.run_requests == []
    assert given_up.skip_message == (
        f"No new learners (no model after {sensors.MAX_CLONE_ATTEMPTS} cloning attempts: {ids[0]}, {ids[1]})"
    )
