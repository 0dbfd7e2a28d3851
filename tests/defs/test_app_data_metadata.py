"""What a `learner_training` run tells about the app's rows: counts of skipped rows by reason and
of learners left for a later week, never a learner's own count; such learners do not fail the run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aivo_fl.defs.ticks import tick_sensor
from aivo_fl.ml.interactions import ROW_PROBLEMS
from aivo_fl.ml.simulation.world import generate_learner
from aivo_fl.ml.store.learner_buckets import bucket_key
from aivo_fl.registry.schema import utcnow
from tests.defs.conftest import SQLITE_ONLY, Deployment, ids_in_bucket
from tests.operations.test_app_data import app_row, floats, write_as_the_app
from tests.trained import TrainedMain

pytestmark = SQLITE_ONLY
BUCKET = 7


@pytest.fixture
def trained(deployment: Deployment, trained_main: TrainedMain) -> Deployment:
    return deployment.with_main_version(trained_main)


def test_a_training_run_counts_skipped_rows_by_reason_and_waiting_learners(trained: Deployment) -> None:
    d = trained
    nan, label, sparse = ids_in_bucket(BUCKET, 3)
    for learner, count in ((nan, 60), (label, 60), (sparse, 6)):
        data = generate_learner(learner, 0, count)
        d.registry.add_learner(learner, baseline_completed_at=utcnow())
        features = np.concatenate([data.train.features, data.heldout.features])
        targets = {h: np.concatenate([data.train.targets[h], data.heldout.targets[h]]) for h in data.train.targets}
        d.registry.add_interactions(learner, features, targets)
    [clone] = tick_sensor(d.defs, d.instance, "new_learner_sensor").run_requests
    assert d.run("clone_learners", tags=clone.tags).success
    write_as_the_app(d.registry, nan, [app_row(floats(i0=np.nan))] * 2)
    write_as_the_app(d.registry, label, [app_row(difficulty=99)])
    write_as_the_app(d.registry, sparse, [app_row(floats(i5=1e30))] * 20)

    [request] = tick_sensor(d.defs, d.instance, "learner_activity_sensor").run_requests
    result = d.run("train_learners", tags=request.tags)

    assert result.success  # a learner waiting for usable rows is not a failure
    [done] = result.asset_materializations_for_node("learner_training")
    metadata = {k: v.value for k, v in done.metadata.items()}
    assert metadata["buckets"] == bucket_key(BUCKET)
    assert (metadata["trained"], metadata["failed"], metadata["not_trained"], metadata["rebuilt"]) == (2, 0, 1, 0)
    assert metadata["skipped_rows"] == dict.fromkeys(ROW_PROBLEMS, 0) | {
        "features_non_finite": 2,
        "label_out_of_range": 1,
        "features_out_of_range": 20,
    }
    assert not any(learner in json.dumps(metadata["skipped_rows"]) for learner in (nan, label, sparse))
