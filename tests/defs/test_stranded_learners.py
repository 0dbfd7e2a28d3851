"""Learners left without a model by a failed or killed cloning run are asked for again, boundedly."""

from __future__ import annotations

import pytest

from aivo_fl.defs import sensors
from aivo_fl.defs.run_tags import BUCKETS_TAG
from aivo_fl.defs.ticks import tick_sensor
from aivo_fl.ml.store.learner_buckets import bucket_key, bucket_of
from aivo_fl.registry.schema import utcnow
from tests.defs.conftest import SQLITE_ONLY, Deployment, ids_in_bucket
from tests.trained import TrainedMain

pytestmark = SQLITE_ONLY

BUCKET = 42


@pytest.fixture
def trained(deployment: Deployment, trained_main: TrainedMain) -> Deployment:
    return deployment.with_main_version(trained_main)


def _learners(d: Deployment, ids: list[str]) -> list[str]:
    for learner_id in ids:
        d.registry.add_learner(learner_id, baseline_completed_at=utcnow())
    return ids


def _with_model(d: Deployment, ids: list[str]) -> list[str]:
    return [k for k in ids if d.registry.get_personalized_model(k) is not None]


def test_one_bad_file_fails_that_learner_only_and_it_is_asked_for_again(trained: Deployment) -> None:
    d = trained
    ids = _learners(d, ids_in_bucket(BUCKET, 3))
    [request] = tick_sensor(d.defs, d.instance, "new_learner_sensor").run_requests
    # Something that is not a clone sits where the second learner's folder goes.
    d.store.learners_root.mkdir(parents=True, exist_ok=True)
    (d.store.learners_root / ids[1]).write_bytes(b"not a clone")
    first = d.run("clone_learners", tags=request.tags)
    assert not first.success
    assert _with_model(d, ids) == [ids[0], ids[2]]  # the batch went on
    # The run's materialization is recorded all the same, counting the failure by its reason.
    [done] = first.asset_materializations_for_node("learner_models")
    assert done.partition is None
    assert (done.metadata["cloned"].value, done.metadata["failed"].value) == (2, 1)
    assert (done.metadata["buckets"].value, done.metadata["buckets_handled"].value) == (bucket_key(BUCKET), 1)
    [(reason, count)] = done.metadata["failures_by_reason"].value.items()
    assert count == 1
    assert "<learner>" in reason and ids[1] not in str(done.metadata)  # no learner id in Dagster's storage
    assert done.metadata["source_version"].value == "1.0.0"
    assert done.metadata["learners_with_model"].value == 2

    retry = tick_sensor(d.defs, d.instance, "new_learner_sensor")
    [again] = retry.run_requests
    assert again.tags[BUCKETS_TAG] == bucket_key(BUCKET)
    assert again.run_key != request.run_key
    assert d.run("clone_learners", tags=again.tags).success
    assert _with_model(d, ids) == ids
    assert tick_sensor(d.defs, d.instance, "new_learner_sensor").skip_message == "No new learners"


def test_retries_are_bounded_and_the_reason_is_visible(trained: Deployment) -> None:
    d = trained
    ids = _learners(d, ids_in_bucket(BUCKET, 2))
    first = tick_sensor(d.defs, d.instance, "new_learner_sensor")
    # The cloning run ends without cloning anybody (switched off: it fails with that reason).
    off = d.with_settings(use_federated_learning=False)
    assert not off.run("clone_learners", tags=first.run_requests[0].tags).success

    cursor, run_keys = first.cursor, [first.run_requests[0].run_key]
    for _ in range(sensors.MAX_CLONE_ATTEMPTS - 1):
        data = tick_sensor(d.defs, d.instance, "new_learner_sensor", cursor)
        cursor = data.cursor
        [request] = data.run_requests  # both learners, one run over their bucket
        assert request.tags[BUCKETS_TAG] == bucket_key(BUCKET)
        run_keys.append(request.run_key)
        assert not off.run("clone_learners", tags=request.tags).success
    assert len(set(run_keys)) == len(run_keys)  # a fresh run key each time, or the daemon would drop it
    given_up = tick_sensor(d.defs, d.instance, "new_learner_sensor", cursor)
    assert given_up.run_requests == []
    assert given_up.skip_message == (
        f"No new learners (no model after {sensors.MAX_CLONE_ATTEMPTS} cloning attempts: {ids[0]}, {ids[1]})"
    )

    # A newcomer in another bucket is still cloned; the given-up learners are not asked for.
    [newcomer] = _learners(d, ids_in_bucket(BUCKET + 1, 1, prefix="newcomer"))
    [request] = tick_sensor(d.defs, d.instance, "new_learner_sensor", given_up.cursor).run_requests
    assert request.tags[BUCKETS_TAG] == bucket_key(bucket_of(newcomer))
    assert d.run("clone_learners", tags=request.tags).success
    assert _with_model(d, [*ids, newcomer]) == [newcomer]


def test_a_failed_run_pushed_out_of_the_runs_read_is_still_retried(
    trained: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = trained
    [learner] = _learners(d, ids_in_bucket(BUCKET, 1))
    first = tick_sensor(d.defs, d.instance, "new_learner_sensor")
    off = d.with_settings(use_federated_learning=False)
    assert not off.run("clone_learners", tags=first.run_requests[0].tags).success
    counted = tick_sensor(d.defs, d.instance, "new_learner_sensor", first.cursor)  # the failure is in the cursor
    assert len(counted.run_requests) == 1

    # Later runs of another bucket push the failed run out of the HISTORY runs a tick reads.
    monkeypatch.setattr(sensors, "HISTORY", 1)
    far = BUCKET + 500
    [other] = _learners(d, ids_in_bucket(far, 1))
    only_far = {BUCKETS_TAG: bucket_key(far)}
    assert d.run("clone_learners", tags=only_far).success
    assert _with_model(d, [learner, other]) == [other]

    [again] = tick_sensor(d.defs, d.instance, "new_learner_sensor", counted.cursor).run_requests
    assert again.tags[BUCKETS_TAG] == bucket_key(BUCKET)
    assert again.run_key != first.run_requests[0].run_key  # not the failed run's key: the daemon launches it
    assert d.run("clone_learners", tags=again.tags).success
    assert _with_model(d, [learner]) == [learner]
