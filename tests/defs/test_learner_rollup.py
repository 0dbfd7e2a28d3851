"""What the learner assets record: one materialization a run, only when somebody was handled, its
failures rolled up by reason with no learner id."""

from __future__ import annotations

import pytest

from aivo_fl.defs.assets.learners import MAX_REASONS, failure_rollup
from aivo_fl.defs.run_tags import BUCKETS_TAG
from aivo_fl.ml.store.learner_buckets import bucket_key
from aivo_fl.registry.schema import utcnow
from tests.defs.conftest import SQLITE_ONLY, Deployment, ids_in_bucket
from tests.trained import TrainedMain


def test_failures_are_counted_by_reason_without_the_learner_ids() -> None:
    failures = {
        "ana": "Learner ana has 3 interactions; local training needs at least 9",
        "bo": "Learner bo has 3 interactions; local training needs at least 9",
        "cy": "Damaged file /models/learners/cy/heads.safetensors: bad header",
    }
    assert failure_rollup(failures) == {
        "Learner <learner> has 3 interactions; local training needs at least 9": 2,
        "Damaged file /models/learners/<learner>/heads.safetensors: bad header": 1,
    }
    assert failure_rollup({}) == {}


def test_the_roll_up_keeps_the_most_frequent_reasons() -> None:
    failures = {f"l{i}": f"reason {i % (MAX_REASONS + 5)}" for i in range(200)}
    rollup = failure_rollup(failures)
    assert len(rollup) == MAX_REASONS
    assert list(rollup.values()) == sorted(rollup.values(), reverse=True)
    assert sum(rollup.values()) < len(failures)  # the rarest reasons are left out, not miscounted


@SQLITE_ONLY
def test_a_run_that_handles_nobody_materializes_nothing(deployment: Deployment, trained_main: TrainedMain) -> None:
    d = deployment.with_main_version(trained_main)
    [learner] = ids_in_bucket(7, 1)
    d.registry.add_learner(learner, baseline_completed_at=utcnow())
    empty = d.run("clone_learners", tags={BUCKETS_TAG: f"{bucket_key(100)}..{bucket_key(200)}"})
    assert empty.success and empty.asset_materializations_for_node("learner_models") == []

    done = d.run("clone_learners", tags={BUCKETS_TAG: f"{bucket_key(0)}..{bucket_key(200)}"})
    [materialization] = done.asset_materializations_for_node("learner_models")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert (metadata["cloned"], metadata["failed"], metadata["failures_by_reason"]) == (1, 0, {})
    assert (metadata["buckets"], metadata["buckets_handled"]) == ("bucket-0000..bucket-0200", 1)
    assert metadata["learners_with_model"] == 1
    assert learner not in str(metadata)


@pytest.mark.parametrize("text", ["bucket-0005..bucket-0003", "learner-1", "bucket-1024"])
def test_a_garbled_bucket_range_fails_the_run_with_the_reason(
    deployment: Deployment, trained_main: TrainedMain, text: str
) -> None:
    d = deployment.with_main_version(trained_main)
    result = d.run("clone_learners", tags={BUCKETS_TAG: text})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "learner bucket" in str(failure.step_failure_data.error or failure.step_failure_data.user_failure_data)
