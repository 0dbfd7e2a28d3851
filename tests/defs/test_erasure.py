"""Complete erasure: a learner deleted in the app leaves no row, file or log line behind, and no
Dagster run tag or materialization ever held the id (learner runs name ranges of hash buckets)."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from pydantic import SecretStr

from aivo_fl.defs.run_tags import BUCKETS_TAG
from aivo_fl.ml.store.clone_file import CLONE_NAME
from aivo_fl.registry.erasure import pseudonym
from aivo_fl.registry.schema import Learner, utcnow
from tests.app_side import contribution_reasons, delete_learner_in_app
from tests.defs.conftest import Deployment
from tests.defs.test_federated_cycle import _clone_and_train
from tests.defs.test_sensors import tick
from tests.trained import TrainedMain

PATH_LIKE = "../escapee"


def rows_mentioning(engine: sa.Engine, learner_id: str) -> list[tuple[str, dict[str, object]]]:
    """Every row of every table with a value that contains the id as a whole word."""
    pattern = re.compile(rf"(?<![\w.-]){re.escape(learner_id)}(?![\w.-])")
    found = []
    metadata = sa.MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(sa.select(table)).mappings():
                if any(pattern.search(str(v)) for v in row.values() if not isinstance(v, bytes | memoryview)):
                    found.append((table.name, dict(row)))
    return found


def files_mentioning(root: Path, learner_id: str) -> list[Path]:
    needle = learner_id.encode()
    return [p for p in root.rglob("*") if learner_id in p.name or (p.is_file() and needle in p.read_bytes())]


def test_erase_learners_job_removes_everything_but_the_pseudonymous_audit_trail(
    deployment: Deployment, trained_main: TrainedMain
) -> None:
    small = deployment.with_settings(erasure_key=SecretStr("test-erasure-key"), base_model_name="aivo-x")
    small.with_main_version(trained_main)
    learners, _ = _clone_and_train(small)
    gone, contributor, neighbour = learners[3], learners[5], learners[4]
    assert small.registry.get_personalized_model(gone).base_model == "aivo-x"  # AIVO_BASE_MODEL_NAME
    # A damaged delta: the round excludes the learner. Under DP the aggregation log releases the
    # exclusion as a count, never the id (docs/privacy.md); the registry keeps who it was.
    (small.store.learner_dir(gone) / CLONE_NAME).write_bytes(b"not safetensors")
    small.run("federated_aggregation")  # promoted or rejected by the gate: either way the round is recorded
    assert len(small.registry.get_federated_updates()) == 1
    log = small.settings.aggregation_log_path
    assert gone not in log.read_text()
    contributions = {
        u["updateId"]: len(contribution_reasons(small.registry, u["updateId"]))
        for u in small.registry.get_federated_updates()
    }
    rounds, charged = small.registry.round_privacy_records(), small.registry.learner_charged_rounds()
    assert tick(small, "deleted_learner_sensor").skip_message == "No deleted learners to erase"

    delete_learner_in_app(small.registry, gone)  # excluded from the round: named in the registry only
    delete_learner_in_app(small.registry, contributor)  # contributed: charged in the privacy ledger
    [request] = tick(small, "deleted_learner_sensor").run_requests
    result = small.run("erase_learners", tags=request.tags)
    assert result.success
    [report] = result.asset_materializations_for_node("erased_learners")
    assert report.metadata["learners"].value == 2
    assert report.metadata["files_deleted"].value >= 2  # the clone's heads and manifest at least
    per_learner = report.metadata["report"].value
    assert gone not in str(per_learner) and len(per_learner) == 2
    assert all(sum(entry["rows"].values()) > 0 for entry in per_learner.values())

    for learner_id in (gone, contributor):
        assert rows_mentioning(small.registry.engine, learner_id) == []
        assert files_mentioning(small.store.main_root.parent, learner_id) == []
        assert learner_id not in log.read_text()
        assert learner_id not in str([run.tags for run in small.instance.get_runs()])
    ranges = [run.tags[BUCKETS_TAG] for run in small.instance.get_runs() if BUCKETS_TAG in run.tags]
    assert ranges and all(value.startswith("bucket-") for value in ranges)
    assert small.store.learner_dir(neighbour).is_dir()
    assert small.registry.get_personalized_model(neighbour) is not None
    assert gone not in [e.learner_id for e in small.registry.get_eligible_for_aggregation(7)]
    assert small.registry.get_statistics()["activeLearnerModels"] == len(learners) - 2
    # The audit trail keeps every contribution (under the keyed hash); the privacy ledger keeps its charge.
    assert {u: len(contribution_reasons(small.registry, u)) for u in contributions} == contributions
    assert small.registry.round_privacy_records() == rounds
    alias = pseudonym(contributor, "test-erasure-key")
    assert small.registry.learner_charged_rounds()[alias] == charged[contributor] != []
    assert tick(small, "deleted_learner_sensor").skip_message == "No deleted learners to erase"


def test_a_path_like_id_deleted_in_the_app_asks_for_nothing(deployment: Deployment) -> None:
    # The app's table may hold any id; aivo-fl refuses path-like ids, so it never stored data for them.
    with deployment.registry.engine.begin() as connection:
        connection.execute(sa.insert(Learner).values(id=PATH_LIKE, deletedAt=utcnow(), createdAt=utcnow()))
    data = tick(deployment, "deleted_learner_sensor")
    assert data.run_requests == []
    assert (
        data.skip_message
        == "No deleted learners to erase (1 path-like id(s) ignored: aivo-fl never stored data for them)"
    )


def test_without_the_key_the_run_fails_once_and_the_sensor_waits(deployment: Deployment) -> None:
    deployment.registry.add_learner("learner-x", baseline_completed_at=utcnow())
    delete_learner_in_app(deployment.registry, "learner-x")
    [request] = tick(deployment, "deleted_learner_sensor").run_requests
    failed = deployment.run("erase_learners", tags=request.tags)
    assert not failed.success
    assert tick(deployment, "deleted_learner_sensor").skip_message.startswith(
        f"The last erase_learners run failed ({failed.run_id})"
    )
