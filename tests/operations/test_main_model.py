"""Curriculum dataset and main-model training, against a real registry and model store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aivo_fl.ml.samples import HEAD_CLASSES
from aivo_fl.ml.store.artifacts import load_main_model
from aivo_fl.ml.training.main_model import TrainingConfig
from aivo_fl.operations.main_model import build_curriculum_dataset, train_and_register_main_model
from aivo_fl.operations.store import ModelStore, load_samples
from aivo_fl.registry import ModelRegistry

SAMPLES = 1200
EPOCHS = 3


def quiet(_: str) -> None:
    pass


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "main-aivo", tmp_path / "learners")


def test_curriculum_dataset_is_stored_reproducible_and_balanced(store: ModelStore) -> None:
    first = build_curriculum_dataset(store, SAMPLES, seed=3, report=quiet)
    assert first.path.is_file() and first.rows == SAMPLES
    stored = load_samples(first.path)
    assert len(stored) == SAMPLES and stored.features.shape[0] == SAMPLES
    assert set(stored.targets) == set(HEAD_CLASSES)
    for head, shares in first.class_balance.items():
        assert len(shares) == HEAD_CLASSES[head]
        assert sum(shares) == pytest.approx(1.0)
        # The balance describes the stored targets, not some other draw.
        assert shares[0] == pytest.approx(float((stored.targets[head] == 0).mean()))
    for ceiling in first.bayes_ceiling.values():
        assert 0.0 < ceiling <= 1.0

    again = load_samples(build_curriculum_dataset(store, SAMPLES, seed=3, report=quiet).path)
    np.testing.assert_array_equal(again.features, stored.features)
    other = load_samples(build_curriculum_dataset(store, SAMPLES, seed=4, report=quiet).path)
    assert not np.array_equal(other.features, stored.features)


def test_first_model_is_registered_active_as_1_0_0_with_loadable_files(
    store: ModelStore, registry: ModelRegistry
) -> None:
    dataset = build_curriculum_dataset(store, SAMPLES, 0, report=quiet)
    lines: list[str] = []
    outcome = train_and_register_main_model(
        registry, store, dataset.path, TrainingConfig(epochs=EPOCHS), report=lines.append
    )

    assert outcome.version == "1.0.0"
    active = registry.get_active_version()
    assert active is not None and active.version == "1.0.0"
    assert Path(active.model_path) == outcome.path == store.main_root / "1.0.0"
    assert active.parent_version is None
    assert active.metrics["dataSeed"] == 0 and active.metrics["epochs"] == EPOCHS
    assert any("Registered version 1.0.0" in line for line in lines)

    model, manifest = load_main_model(store.main_root, "1.0.0")
    assert manifest  # verified against its manifest on load
    with torch.no_grad():
        outputs = model(torch.from_numpy(load_samples(dataset.path).features[:8]))
    assert set(outputs) == set(HEAD_CLASSES)
    for head, logits in outputs.items():
        assert logits.shape == (8, HEAD_CLASSES[head]) and torch.isfinite(logits).all()
    # The model learned something: better than always guessing one class on its own training data.
    assert outcome.result.final_accuracy > 1.0 / max(HEAD_CLASSES.values())


def test_retrain_takes_the_next_major_version_and_keeps_the_first(store: ModelStore, registry: ModelRegistry) -> None:
    dataset = build_curriculum_dataset(store, SAMPLES, 0, report=quiet)
    config = TrainingConfig(epochs=1)
    train_and_register_main_model(registry, store, dataset.path, config, report=quiet)
    second = train_and_register_main_model(registry, store, dataset.path, config, report=quiet)

    assert second.version == "2.0.0"
    versions = {v.version: v for v in registry.list_main_versions()}
    assert set(versions) == {"1.0.0", "2.0.0"}
    assert versions["2.0.0"].parent_version == "1.0.0"
    assert registry.get_active_version().version == "2.0.0"  # type: ignore[union-attr]
    load_main_model(store.main_root, "1.0.0")  # the previous version is still intact on disk


def test_crash_leftover_1_0_0_folder_does_not_push_the_first_model_to_2_0_0(
    store: ModelStore, registry: ModelRegistry
) -> None:
    leftover = store.main_root / "1.0.0"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"from a run killed before registering")
    dataset = build_curriculum_dataset(store, SAMPLES, 0, report=quiet)
    lines: list[str] = []
    outcome = train_and_register_main_model(
        registry, store, dataset.path, TrainingConfig(epochs=1), report=lines.append
    )

    assert outcome.version == "1.0.0"
    assert any("never registered" in line for line in lines)
    model, _ = load_main_model(store.main_root, "1.0.0")  # the leftover bytes were replaced
    assert model is not None
