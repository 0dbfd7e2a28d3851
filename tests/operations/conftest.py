"""A registry and model store with a trained main model and a cohort of trained learners.

The cohort is built once per backend and session (the session's trained main version, 20 learners
cloned and trained in one batched call) and restored for each test from that snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aivo_fl.ml.round.options import PrivacySettings
from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.learners import clone_learners, train_learners_locally
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry
from tests.trained import Build, Snapshots, TrainedMain

LEARNERS = 20
PRIVACY = PrivacySettings(enabled=True, noise_multiplier=0.1, clip_norm=1.0)


@dataclass
class Cohort:
    registry: ModelRegistry
    store: ModelStore
    learners: list[str]


def quiet(_: str) -> None:
    pass


def store_in(folder: Path) -> ModelStore:
    return ModelStore(folder / "main-aivo", folder / "learners")


def cohort_builder(trained_main: TrainedMain) -> Build:
    def build(registry: ModelRegistry, folder: Path) -> list[str]:
        store = store_in(folder)
        trained_main.install(registry, store)
        learners = simulate_new_learners(registry, LEARNERS)
        clone_learners(registry, store, learners)
        trained = train_learners_locally(registry, store, learners, epochs=5)
        assert not trained.failures, trained.failures
        return learners

    return build


@pytest.fixture
def cohort(backend: str, trained_main: TrainedMain, snapshots: Snapshots) -> Iterator[Cohort]:
    snapshot = snapshots.get("cohort", backend, cohort_builder(trained_main))
    with snapshot.restored() as url:
        registry = ModelRegistry(url)
        yield Cohort(registry, store_in(snapshot.live), list(snapshot.value))
        registry.engine.dispose()
