"""A batch never loses its good learners to one bad one: at reading, training and recording, the
learner at fault is found by retrying per learner (or by halves) and fails alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from aivo_fl.ml.samples import LearnerData
from aivo_fl.ml.training.local import LocalTrainingConfig
from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.isolation import train_isolated
from aivo_fl.operations.learners import clone_learners, split_interactions, train_learners_locally
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry, migrate
from tests.operations.test_app_data import World
from tests.trained import TrainedMain


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str, trained_main: TrainedMain) -> Iterator[World]:
    """Ten cloned learners on SQLite (the faults below are made with SQLite's own triggers and types)."""
    registry = ModelRegistry(sqlite_url)
    migrate(registry.engine)
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    trained_main.install(registry, store)
    learners = simulate_new_learners(registry, 10)
    clone_learners(registry, store, learners)
    yield World(registry, store, learners)
    registry.engine.dispose()


def test_a_session_the_registry_refuses_fails_alone_and_leaves_no_delta_to_trust(world: World) -> None:
    refused = world.learners[3]
    with world.registry.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"""CREATE TRIGGER refuse BEFORE INSERT ON "ModelTrainingSession" WHEN NEW."learnerId" = '{refused}'
                BEGIN SELECT RAISE(ABORT, 'refused by a constraint'); END"""
            )
        )

    batch = train_learners_locally(world.registry, world.store, world.learners, epochs=2)

    assert list(batch.failures) == [refused]
    assert "refused by a constraint" in str(batch.failures[refused])
    assert sorted(batch.outcomes) == sorted(set(world.learners) - {refused})
    eligible = {e.learner_id for e in world.registry.get_eligible_for_aggregation(7)}
    assert eligible == set(world.learners) - {refused}


def test_a_learner_whose_rows_cannot_be_read_fails_alone(world: World) -> None:
    unreadable = world.learners[5]
    with world.registry.engine.begin() as conn:  # a timestamp SQLite stores but no driver can parse
        conn.execute(
            sa.text("""UPDATE "LearnerInteraction" SET "createdAt" = 'yesterday' WHERE "learnerId" = :l"""),
            {"l": unreadable},
        )

    batch = train_learners_locally(world.registry, world.store, world.learners, epochs=2)

    assert list(batch.failures) == [unreadable]
    assert "\n" not in str(batch.failures[unreadable])
    assert sorted(batch.outcomes) == sorted(set(world.learners) - {unreadable})


def test_a_batched_training_that_fails_for_one_learner_is_split_until_only_that_learner_fails(world: World) -> None:
    data = []
    for learner in world.learners:
        train, heldout = split_interactions(world.registry.get_interactions(learner))
        data.append(LearnerData(learner, train, heldout))
    bad = data[6]
    bad.train.targets["difficulty"][0] = 99  # past the checks that reading makes: torch fails the batch
    version = world.registry.get_active_version().version

    done = train_isolated(world.store, data, version, LocalTrainingConfig(epochs=1), None)

    assert list(done.failures) == [bad.learner_id]
    assert "out of bounds" in str(done.failures[bad.learner_id])
    assert sorted(r.learner_id for r in done.results) == sorted(set(world.learners) - {bad.learner_id})
    assert all(np.isfinite(r.loss_after) for r in done.results)
