"""The activation guide's cloning check, run against a real registry and model store."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from aivo_fl.operations.cloning_check import CloningCheckFailed, run_cloning_check
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry
from aivo_fl.registry.schema import PersonalizedModel
from tests.trained import TrainedMain


def quiet(_: str) -> None:
    pass


@pytest.fixture
def trained(tmp_path: Path, registry: ModelRegistry, trained_main: TrainedMain) -> ModelStore:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    trained_main.install(registry, store)
    return store


def _no_test_learner_left(registry: ModelRegistry, store: ModelStore, learner_id: str) -> None:
    assert registry.get_personalized_model(learner_id) is None
    assert not store.learner_dir(learner_id).exists()


def test_check_passes_on_a_healthy_store_and_leaves_nothing_behind(
    trained: ModelStore, registry: ModelRegistry
) -> None:
    store = trained
    lines: list[str] = []
    clone = run_cloning_check(registry, store, lines.append)

    assert clone.source_version == "1.0.0"
    assert lines[-1] == "✓ All tests passed!"
    assert clone.architecture.frozen_layers > 0 and clone.architecture.trainable_layers > 0
    _no_test_learner_left(registry, store, clone.learner_id)


def test_without_a_main_model_step_1_fails_with_the_refused_exit_code(tmp_path: Path, registry: ModelRegistry) -> None:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    with pytest.raises(CloningCheckFailed) as caught:
        run_cloning_check(registry, store, quiet)
    assert str(caught.value).startswith("Step 1 failed")
    assert caught.value.exit_code == 4
    assert not store.learners_root.exists() or not any(store.learners_root.iterdir())


def test_tampered_main_weights_fail_the_check_and_clean_up(trained: ModelStore, registry: ModelRegistry) -> None:
    store = trained
    weights = next((store.main_root / "1.0.0").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit: the manifest's checksum no longer matches
    weights.write_bytes(bytes(data))

    with pytest.raises(CloningCheckFailed) as caught:
        run_cloning_check(registry, store, quiet)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code != 0
    assert list(store.learners_root.glob("test-learner-*")) == []
    with registry.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(PersonalizedModel)) == 0
