"""Shared fixtures: one small, really trained main model per test session."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from aivo_fl.ml.model import PERSONALIZATION_DEPTHS, CurriculumNet
from aivo_fl.ml.samples import Samples
from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.store.artifacts import save_main_model
from aivo_fl.ml.training.main_model import TrainingConfig, TrainingResult, train_model

SMALL_SAMPLES = 3_000
SMALL_EPOCHS = 30


@pytest.fixture(scope="session")
def small_curriculum() -> Samples:
    return generate_curriculum(SMALL_SAMPLES, seed=0)


@pytest.fixture(scope="session")
def trained_small(small_curriculum: Samples) -> tuple[CurriculumNet, TrainingResult]:
    return train_model(small_curriculum, TrainingConfig(epochs=SMALL_EPOCHS))


@pytest.fixture(scope="session")
def main_store(tmp_path_factory: pytest.TempPathFactory, trained_small: tuple) -> Path:
    """A main store holding version 1.0.0 (the trained small model). Treat as read-only."""
    model, result = trained_small
    root = tmp_path_factory.mktemp("main")
    save_main_model(root, "1.0.0", model, {"val_accuracy": result.val_accuracy}, data_seed=0)
    return root


@pytest.fixture(scope="session", params=sorted(PERSONALIZATION_DEPTHS))
def depth_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, trained_small: tuple) -> Path:
    """Version 1.0.0 at each personalization depth (same weights, different frozen/trainable split)."""
    model = copy.deepcopy(trained_small[0])
    model.frozen_layers = PERSONALIZATION_DEPTHS[request.param]
    root = tmp_path_factory.mktemp(f"main-{request.param}")
    save_main_model(root, "1.0.0", model, {}, data_seed=0)
    return root
