"""A registry and model store with a trained main model and a cohort of trained learners."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aivo_fl.ml.round.options import PrivacySettings
from aivo_fl.ml.training.main_model import TrainingConfig
from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.learners import clone_learners, train_learner_locally
from aivo_fl.operations.main_model import build_curriculum_dataset, train_and_register_main_model
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry, migrate

LEARNERS = 20
PRIVACY = PrivacySettings(enabled=True, noise_multiplier=0.1, clip_norm=1.0)


@dataclass
class Cohort:
    registry: ModelRegistry
    store: ModelStore
    learners: list[str]


def quiet(_: str) -> None:
    pass


@pytest.fixture
def cohort(tmp_path: Path, database_url: str) -> Iterator[Cohort]:
    registry = ModelRegistry(database_url)
    migrate(registry.engine)
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    dataset = build_curriculum_dataset(store, 5000, 0, report=quiet)
    train_and_register_main_model(registry, store, dataset.path, TrainingConfig(epochs=40), report=quiet)
    learners = simulate_new_learners(registry, LEARNERS)
    clone_learners(registry, store, learners)
    for learner_id in learners:
        train_learner_locally(registry, store, learner_id, epochs=5)
    yield Cohort(registry, store, learners)
    registry.engine.dispose()
