"""Cloning learners and training them locally, against a real registry and model store."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import aivo_fl.operations.learners as learners_module
from aivo_fl.ml.store.artifacts import load_main_model, save_main_model
from aivo_fl.ml.store.cloning import learner_heads
from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.learners import (
    MainModelMissing,
    clone_learners,
    train_learner_locally,
    train_learners_locally,
)
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry, RegistryError
from tests.trained import TrainedMain


def quiet(_: str) -> None:
    pass


@dataclass
class World:
    registry: ModelRegistry
    store: ModelStore


@pytest.fixture
def world(tmp_path: Path, registry: ModelRegistry, trained_main: TrainedMain) -> Iterator[World]:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    trained_main.install(registry, store)
    yield World(registry, store)


def test_cloning_without_a_main_model_is_refused(tmp_path: Path, registry: ModelRegistry) -> None:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    learners = simulate_new_learners(registry, 1)
    with pytest.raises(MainModelMissing):
        clone_learners(registry, store, learners)
    assert not store.learners_root.exists() or not any(store.learners_root.iterdir())


def test_clones_are_written_and_registered_and_a_bad_id_fails_alone(world: World, tmp_path: Path) -> None:
    learners = simulate_new_learners(world.registry, 3)
    batch = clone_learners(world.registry, world.store, [*learners, "../escape"])

    assert sorted(c.learner_id for c in batch.clones) == sorted(learners)
    assert list(batch.failures) == ["../escape"]
    assert "\n" not in batch.failures["../escape"]
    assert not (tmp_path / "escape").exists() and not (world.store.learners_root.parent / "escape").exists()
    for learner_id in learners:
        record = world.registry.get_personalized_model(learner_id)
        assert record is not None
        assert record.metadata["sourceVersion"] == "1.0.0"
        assert Path(record.metadata["clonedModelPath"]) == world.store.learner_dir(learner_id)
        assert world.store.learner_dir(learner_id).is_dir()
        arch = record.metadata["architecture"]
        assert arch["frozenLayers"] + arch["trainableLayers"] == arch["totalLayers"]
        assert 0 < arch["trainableParameters"] < arch["totalParameters"]


def test_recloning_keeps_an_intact_clone_and_replaces_a_damaged_one(world: World) -> None:
    intact, damaged = simulate_new_learners(world.registry, 2)
    clone_learners(world.registry, world.store, [intact, damaged])
    intact_files = {p.name: p.read_bytes() for p in world.store.learner_dir(intact).iterdir() if p.is_file()}
    manifests = [p for p in world.store.learner_dir(damaged).iterdir() if p.suffix == ".json"]
    assert manifests, "a clone has a JSON manifest to damage"
    for path in manifests:
        path.write_text("{not json")

    batch = clone_learners(world.registry, world.store, [intact, damaged])  # a retried run

    assert batch.failures == {}
    assert {p.name: p.read_bytes() for p in world.store.learner_dir(intact).iterdir() if p.is_file()} == intact_files
    assert sorted(c.learner_id for c in batch.clones) == sorted([intact, damaged])
    # The damaged clone was rebuilt and trains like any other.
    outcome = train_learner_locally(world.registry, world.store, damaged, epochs=1)
    assert outcome.result.source_version == "1.0.0"


def test_local_training_records_a_session_and_writes_a_delta(world: World) -> None:
    (learner,) = simulate_new_learners(world.registry, 1)
    clone_learners(world.registry, world.store, [learner])
    outcome = train_learner_locally(world.registry, world.store, learner, epochs=3)

    result = outcome.result
    assert outcome.session_id > 0
    assert result.learner_id == learner and result.source_version == "1.0.0"
    assert result.delta_path.is_file() and result.delta_path.stat().st_size > 0
    assert result.delta_norm > 0  # the personal layers really moved
    assert 0 < result.samples < 200  # the held-out quarter is not trained on
    assert np.isfinite([result.loss_before, result.loss_after]).all()
    eligible = world.registry.get_eligible_for_aggregation(7)
    assert [e.learner_id for e in eligible] == [learner]


def test_local_training_refuses_uncloned_learners_and_too_little_data(world: World) -> None:
    (uncloned,) = simulate_new_learners(world.registry, 1)
    with pytest.raises(RegistryError, match="clone it first"):
        train_learner_locally(world.registry, world.store, uncloned, epochs=1)

    (sparse,) = simulate_new_learners(world.registry, 1, interactions=6)
    clone_learners(world.registry, world.store, [sparse])
    with pytest.raises(RegistryError, match="interactions"):
        train_learner_locally(world.registry, world.store, sparse, epochs=1)
    assert world.registry.get_eligible_for_aggregation(7) == []


def test_local_training_refuses_a_path_like_learner_id(world: World) -> None:
    with pytest.raises(ValueError):
        train_learner_locally(world.registry, world.store, "../../main-aivo", epochs=1)
    assert world.registry.get_eligible_for_aggregation(7) == []


def test_learners_train_in_batches_as_they_would_alone_and_a_failure_stays_with_its_learner(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(learners_module, "TRAIN_BATCH", 2)  # several batches, one with a failure in it
    fine = simulate_new_learners(world.registry, 4)
    damaged, uncloned = simulate_new_learners(world.registry, 2)
    (sparse,) = simulate_new_learners(world.registry, 1, interactions=6)
    clone_learners(world.registry, world.store, [*fine, damaged, sparse])
    (world.store.learner_dir(damaged) / "manifest.json").write_text("{not json")
    pristine = tmp_path / "pristine"
    shutil.copytree(world.store.learners_root, pristine)

    batch = train_learners_locally(
        world.registry, world.store, [*fine, damaged, uncloned, sparse, "../escape", "ghost-0001"], epochs=3
    )

    # The clone whose manifest is garbage is rebuilt from the active main version and trained.
    assert sorted(batch.outcomes) == sorted([*fine, damaged])
    assert batch.rebuilt == {damaged: "clone rebuilt from main version 1.0.0: bad manifest"}
    assert world.registry.get_personalized_model(damaged).metadata["rebuilt"]["reason"] == "bad manifest"
    assert sorted(batch.failures) == sorted([uncloned, "../escape", "ghost-0001"])
    assert "clone it first" in str(batch.failures[uncloned])
    assert "6 usable interactions" in batch.not_trained[sparse]
    assert "Unknown learner" in str(batch.failures["ghost-0001"])
    assert not (world.store.learners_root.parent / "escape").exists()
    eligible = world.registry.get_eligible_for_aggregation(7)
    assert sorted(e.learner_id for e in eligible) == sorted([*fine, damaged])  # one session each, none for failures
    assert len({o.session_id for o in batch.outcomes.values()}) == len(fine) + 1
    together = {
        learner: learner_heads(world.store.main_root, world.store.learners_root, learner)[0] for learner in fine
    }

    # The same learners trained one at a time from the same clones end where the batch did.
    shutil.rmtree(world.store.learners_root)
    shutil.copytree(pristine, world.store.learners_root)
    for learner in fine:
        alone = train_learner_locally(world.registry, world.store, learner, epochs=3)
        assert alone.result.samples == batch.outcomes[learner].result.samples
        heads, _ = learner_heads(world.store.main_root, world.store.learners_root, learner)
        for name, tensor in heads.items():
            np.testing.assert_allclose(tensor, together[learner][name], atol=1e-5, rtol=0)
        assert not np.array_equal(heads[name], learner_heads(world.store.main_root, pristine, learner)[0][name])


def test_a_clone_behind_the_active_version_is_rebased_as_it_trains_and_its_row_follows(world: World) -> None:
    (learner,) = simulate_new_learners(world.registry, 1)
    clone_learners(world.registry, world.store, [learner])
    train_learner_locally(world.registry, world.store, learner, epochs=1)
    active = world.registry.get_active_version()
    assert active is not None
    newer, _ = load_main_model(world.store.main_root, active.version)
    with torch.no_grad():
        for p in newer.heads.parameters():
            p.add_(0.05)  # a promoted round moves the personal layers, the trunk stays
    path = save_main_model(world.store.main_root, "1.1.0", newer, {}, data_seed=0, parent_version=active.version)
    world.registry.register_main_version("1.1.0", str(path), {}, parent_version=active.version)
    metadata_before = world.registry.get_personalized_model(learner).metadata

    outcome = train_learner_locally(world.registry, world.store, learner, epochs=1)

    assert (outcome.result.rebased_from, outcome.result.source_version) == ("1.0.0", "1.1.0")
    record = world.registry.get_personalized_model(learner)
    assert record.metadata == {**metadata_before, "sourceVersion": "1.1.0"}
