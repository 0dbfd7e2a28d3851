"""The app's interactions are untrusted input: written the way the AIVO app writes them (plain SQL
into aivo-fl's own "LearnerInteraction"; the app's mapped table is tests/registry/
test_app_tables.py's), then trained ten learners a batch by `train_learners_locally`, what a
`learner_training` bucket run calls. A bad row costs that row, never the batch."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from aivo_fl.ml.interactions import (
    FEATURES_ENCODING,
    FEATURES_NON_FINITE,
    FEATURES_OUT_OF_RANGE,
    LABEL_OUT_OF_RANGE,
    ROW_PROBLEMS,
)
from aivo_fl.ml.store.cloning import learner_heads, save_trained_clone
from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.learners import clone_learners, train_learner_locally, train_learners_locally
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry, RegistryError
from tests.trained import TrainedMain

EPOCHS = 2


@dataclass
class World:
    registry: ModelRegistry
    store: ModelStore
    learners: list[str]  # ten, cloned, with 200 good interactions each


@pytest.fixture
def world(tmp_path: Path, registry: ModelRegistry, trained_main: TrainedMain) -> Iterator[World]:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    trained_main.install(registry, store)
    learners = simulate_new_learners(registry, 10)
    assert not clone_learners(registry, store, learners).failures
    yield World(registry, store, learners)


def app_row(features: Any = None, **labels: Any) -> dict[str, Any]:
    """One interaction as the app writes it: good unless told otherwise."""
    if features is None:
        features = np.random.default_rng(len(labels)).normal(size=256).astype("<f4").tobytes()
    return {"features": features, "difficulty": 2, "modality": 1, "success": 1} | labels


def floats(**at: float) -> bytes:
    vector = np.random.default_rng(7).normal(size=256).astype("<f4")
    for index, value in at.items():
        vector[int(index.removeprefix("i"))] = value
    return vector.tobytes()


def write_as_the_app(registry: ModelRegistry, learner_id: str, rows: list[dict[str, Any]]) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    with registry.engine.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO "LearnerInteraction" ("learnerId", "features", "difficulty", "modality", "success", '
                '"createdAt") VALUES (:learner, :features, :difficulty, :modality, :success, :at)'
            ),
            [{"learner": learner_id, "at": now} | row for row in rows],
        )


def assert_all_trained_and_finite(world: World, batch: Any) -> None:
    assert not batch.failures, batch.failures
    assert sorted(batch.outcomes) == sorted(world.learners)
    eligible = world.registry.get_eligible_for_aggregation(7)
    assert sorted(e.learner_id for e in eligible) == sorted(world.learners)  # every session recorded
    for learner in world.learners:
        result = batch.outcomes[learner].result
        assert all(math.isfinite(v) for v in (result.loss_before, result.loss_after, result.delta_norm))
        heads, _ = learner_heads(world.store.main_root, world.store.learners_root, learner)
        assert all(np.isfinite(t).all() for t in heads.values()), learner


def test_nan_and_huge_features_are_skipped_and_the_batch_trains(world: World) -> None:
    nan, huge = world.learners[:2]
    write_as_the_app(world.registry, nan, [app_row(floats(i3=np.nan)), app_row(floats(i0=np.inf))])
    write_as_the_app(world.registry, huge, [app_row(floats(i0=1e30)), app_row(floats(i9=-1e30))])

    batch = train_learners_locally(world.registry, world.store, world.learners, epochs=EPOCHS)

    assert_all_trained_and_finite(world, batch)
    assert batch.skipped_rows == {nan: {FEATURES_NON_FINITE: 2}, huge: {FEATURES_OUT_OF_RANGE: 2}}
    assert batch.outcomes[nan].result.samples == batch.outcomes[world.learners[2]].result.samples


def test_labels_outside_a_heads_classes_are_skipped_and_the_batch_trains(world: World) -> None:
    high, low, other = world.learners[:3]
    write_as_the_app(world.registry, high, [app_row(difficulty=99)])
    write_as_the_app(world.registry, low, [app_row(difficulty=-1)])
    write_as_the_app(world.registry, other, [app_row(modality=4), app_row(success=2)])

    batch = train_learners_locally(world.registry, world.store, world.learners, epochs=EPOCHS)

    assert_all_trained_and_finite(world, batch)
    assert batch.skipped_rows == {
        high: {LABEL_OUT_OF_RANGE: 1},
        low: {LABEL_OUT_OF_RANGE: 1},
        other: {LABEL_OUT_OF_RANGE: 2},
    }


def test_a_malformed_features_value_is_skipped_and_the_batch_trains(world: World) -> None:
    short, long_ = world.learners[:2]
    write_as_the_app(world.registry, short, [app_row(b"\x01" * 100)])
    write_as_the_app(world.registry, long_, [app_row(b"\x00" * 1028), app_row(b"")])

    batch = train_learners_locally(world.registry, world.store, world.learners, epochs=EPOCHS)

    assert_all_trained_and_finite(world, batch)
    assert batch.skipped_rows == {short: {FEATURES_ENCODING: 1}, long_: {FEATURES_ENCODING: 2}}


def test_a_learner_with_too_few_good_rows_waits_and_costs_no_one(world: World) -> None:
    (sparse,) = simulate_new_learners(world.registry, 1, interactions=6)
    clone_learners(world.registry, world.store, [sparse])
    write_as_the_app(world.registry, sparse, [app_row(floats(i1=np.nan))] * 10 + [app_row(difficulty=5)])

    batch = train_learners_locally(world.registry, world.store, [*world.learners, sparse], epochs=EPOCHS)

    assert_all_trained_and_finite(world, batch)
    assert list(batch.not_trained) == [sparse]
    assert batch.not_trained[sparse] == (
        f"Learner {sparse} has 6 usable interactions (11 more skipped: 10 features_non_finite, "
        "1 label_out_of_range); local training needs at least 9"
    )
    with pytest.raises(RegistryError, match="6 usable interactions"):
        train_learner_locally(world.registry, world.store, sparse, epochs=EPOCHS)


def test_stats_counts_the_rows_training_skips_by_reason(world: World) -> None:
    assert world.registry.count_unusable_interactions() == dict.fromkeys(ROW_PROBLEMS, 0)
    write_as_the_app(world.registry, world.learners[0], [app_row(floats(i3=np.nan)), app_row(b"\x01" * 100)])
    write_as_the_app(world.registry, world.learners[1], [app_row(difficulty=99)])

    counted = world.registry.count_unusable_interactions(chunk=7)  # several partitions of the stream

    assert counted == dict.fromkeys(ROW_PROBLEMS, 0) | {
        FEATURES_NON_FINITE: 1,
        FEATURES_ENCODING: 1,
        LABEL_OUT_OF_RANGE: 1,
    }


def overwrite_heads(world: World, learner: str, value: float) -> None:
    """What a clone trained before the finite checks could hold: personal layers all `value`, its
    file consistent with them (written by the store's own writer: only the numbers are wrong)."""
    heads, manifest = learner_heads(world.store.main_root, world.store.learners_root, learner)
    bad = {k: np.full_like(v, value) for k, v in heads.items()}
    save_trained_clone(world.store.learner_dir(learner), bad, {k: np.zeros_like(v) for k, v in heads.items()}, manifest)


def test_a_clone_holding_nan_weights_is_rebuilt_from_the_active_main_version(world: World) -> None:
    assert not train_learners_locally(world.registry, world.store, world.learners, epochs=EPOCHS).failures
    poisoned = world.learners[0]
    overwrite_heads(world, poisoned, np.nan)

    batch = train_learners_locally(world.registry, world.store, world.learners, epochs=EPOCHS)

    assert not batch.failures and sorted(batch.outcomes) == sorted(world.learners)
    assert batch.rebuilt == {poisoned: "clone rebuilt from main version 1.0.0: non-finite weights"}
    note = world.registry.get_personalized_model(poisoned).metadata["rebuilt"]
    assert (note["reason"], note["fromVersion"]) == ("non-finite weights", "1.0.0")
    heads, _ = learner_heads(world.store.main_root, world.store.learners_root, poisoned)
    assert all(np.isfinite(t).all() for t in heads.values())


def test_a_training_that_goes_non_finite_keeps_the_previous_clone_and_records_the_others(world: World) -> None:
    assert not train_learners_locally(world.registry, world.store, world.learners, epochs=EPOCHS).failures
    blown = world.learners[0]
    overwrite_heads(world, blown, 3e38)  # finite, but every logit overflows
    files = {p.name: p.read_bytes() for p in world.store.learner_dir(blown).iterdir()}
    sessions = len(world.registry.get_eligible_for_aggregation(7))

    batch = train_learners_locally(world.registry, world.store, world.learners, epochs=EPOCHS)

    assert list(batch.failures) == [blown]
    assert str(batch.failures[blown]) == (
        f"learner {blown!r}: training gave a non-finite loss; the previous clone is kept"
    )
    assert sorted(batch.outcomes) == sorted(world.learners[1:])
    assert {p.name: p.read_bytes() for p in world.store.learner_dir(blown).iterdir()} == files  # nothing written
    assert len(world.registry.get_eligible_for_aggregation(7)) == sessions  # one session each, the old one for `blown`
