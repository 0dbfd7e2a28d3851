"""The learner-activity sensor's run split, ticked on a real temporary Dagster instance.

Learners with enough new interactions are grouped into runs over contiguous stretches of
learner partitions (in partition order), capped at PARTITIONS_PER_RUN; learners below the
threshold, without a partition or without a model are left out; a run key changes only when
its learners have new activity.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from aivo_fl.defs import sensors
from aivo_fl.defs.partitions import learner_partitions
from aivo_fl.defs.ticks import tick_sensor
from aivo_fl.ml.data import generate_learner_activity
from tests.defs.conftest import Deployment

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ENOUGH = sensors.MIN_NEW_INTERACTIONS
TOO_FEW = sensors.MIN_NEW_INTERACTIONS - 1
KEYS = [f"learner-{i:03d}" for i in range(10)]


def _interact(deployment: Deployment, learner_id: str, count: int, week: int = 1) -> None:
    samples = generate_learner_activity(learner_id, 0, week, count)
    deployment.registry.add_interactions(learner_id, samples.features, samples.targets, created_at=NOW)


def _setup(deployment: Deployment, activity: dict[str, int], *, without_model: tuple[str, ...] = ()) -> None:
    """Ten learners with partitions in KEYS order, plus one learner with a model but no partition."""
    for learner_id in [*KEYS, "zz-no-partition"]:
        deployment.registry.add_learner(learner_id, baseline_completed_at=NOW)
    modelled = [k for k in [*KEYS, "zz-no-partition"] if k not in without_model]
    deployment.registry.register_personalized_models({k: {} for k in modelled})
    deployment.instance.add_dynamic_partitions(learner_partitions.name, KEYS)
    for learner_id, count in activity.items():
        _interact(deployment, learner_id, count)


def _ranges(data: dg.SensorExecutionData) -> list[tuple[str, str]]:
    return [(r.tags[sensors.RANGE_START], r.tags[sensors.RANGE_END]) for r in data.run_requests]


def _tick(deployment: Deployment) -> dg.SensorExecutionData:
    return tick_sensor(deployment.defs, deployment.instance, "learner_activity_sensor")


def test_contiguous_ready_learners_share_a_run_gaps_split_runs(deployment: Deployment) -> None:
    k = KEYS
    activity = {k[1]: ENOUGH, k[2]: ENOUGH + 5, k[3]: ENOUGH, k[4]: TOO_FEW, k[5]: ENOUGH, k[6]: ENOUGH}
    activity |= {k[8]: ENOUGH, k[9]: ENOUGH, "zz-no-partition": ENOUGH}
    _setup(deployment, activity, without_model=(k[6],))

    data = _tick(deployment)

    # k0 (no activity), k4 (too few), k6 (no model), k7 (no activity) break the stretches;
    # the learner without a partition is not requested at all.
    assert _ranges(data) == [(k[1], k[3]), (k[5], k[5]), (k[8], k[9])]
    assert len({r.run_key for r in data.run_requests}) == 3
    assert all(r.partition_key is None for r in data.run_requests)  # ranges travel as tags


def test_stretches_follow_partition_order_not_id_order(deployment: Deployment) -> None:
    # Partitions added in an order that differs from the alphabetical order of their ids.
    for learner_id in ["b", "a", "c"]:
        deployment.registry.add_learner(learner_id, baseline_completed_at=NOW)
    deployment.registry.register_personalized_models({k: {} for k in ["a", "b", "c"]})
    deployment.instance.add_dynamic_partitions(learner_partitions.name, ["b", "a", "c"])
    for learner_id in ["a", "b", "c"]:
        _interact(deployment, learner_id, ENOUGH)

    assert _ranges(_tick(deployment)) == [("b", "c")]  # one stretch b, a, c in partition order


def test_a_long_stretch_is_cut_at_the_run_size(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sensors, "PARTITIONS_PER_RUN", 3)
    _setup(deployment, {key: ENOUGH for key in KEYS[:8]})

    data = _tick(deployment)

    assert _ranges(data) == [(KEYS[0], KEYS[2]), (KEYS[3], KEYS[5]), (KEYS[6], KEYS[7])]
    covered = [KEYS.index(start) for start, _ in _ranges(data)]
    assert covered == [0, 3, 6]


def test_run_key_changes_only_for_runs_with_new_activity(deployment: Deployment) -> None:
    k = KEYS
    _setup(deployment, {k[0]: ENOUGH, k[1]: ENOUGH, k[5]: ENOUGH})
    first = {r.tags[sensors.RANGE_START]: r.run_key for r in _tick(deployment).run_requests}
    again = {r.tags[sensors.RANGE_START]: r.run_key for r in _tick(deployment).run_requests}
    assert again == first  # same activity: same keys, so Dagster launches nothing twice

    _interact(deployment, k[5], 3, week=2)
    after = {r.tags[sensors.RANGE_START]: r.run_key for r in _tick(deployment).run_requests}
    assert after[k[0]] == first[k[0]]
    assert after[k[5]] != first[k[5]]


def test_nobody_ready_skips_with_a_reason(deployment: Deployment) -> None:
    _setup(deployment, {KEYS[0]: TOO_FEW})
    data = _tick(deployment)
    assert data.run_requests == []
    assert data.skip_message and str(sensors.MIN_NEW_INTERACTIONS) in data.skip_message
