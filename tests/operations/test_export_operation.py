"""`export_learner_model`: a learner's clone found through the registry, written as one checked file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from aivo_fl.ml.model import build_model, head_state
from aivo_fl.ml.store.artifacts import ArtifactError, main_head_tensors
from aivo_fl.ml.store.clone_file import CLONE_NAME
from aivo_fl.ml.store.cloning import load_learner_model
from aivo_fl.ml.store.export import load_exported_state
from aivo_fl.ml.store.learner_ids import InvalidLearnerId
from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.export import export_learner_model
from aivo_fl.operations.learners import clone_learners, split_interactions, train_learner_locally
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry, RegistryError
from tests.operations.conftest import store_in
from tests.trained import Build, Snapshots, TrainedMain


@dataclass
class Trained:
    registry: ModelRegistry
    store: ModelStore
    learner: str


def one_trained_learner(trained_main: TrainedMain) -> Build:
    def build(registry: ModelRegistry, folder: Path) -> str:
        store = store_in(folder)
        trained_main.install(registry, store)
        [learner] = simulate_new_learners(registry, 1)
        clone_learners(registry, store, [learner])
        train_learner_locally(registry, store, learner, epochs=5)
        return learner

    return build


@pytest.fixture
def trained(backend: str, trained_main: TrainedMain, snapshots: Snapshots) -> Iterator[Trained]:
    snapshot = snapshots.get("one-trained-learner", backend, one_trained_learner(trained_main))
    with snapshot.restored() as url:
        registry = ModelRegistry(url)
        yield Trained(registry, store_in(snapshot.live), snapshot.value)
        registry.engine.dispose()


def test_export_writes_one_checked_file_and_its_manifest(trained: Trained, tmp_path: Path) -> None:
    out = tmp_path / "download"
    out.mkdir()
    outcome = export_learner_model(trained.registry, trained.store, trained.learner, "int8", out)
    assert outcome.path == out / f"{trained.learner}.int8.safetensors"
    assert sorted(p.name for p in out.iterdir()) == [outcome.path.name, outcome.manifest_path.name]
    data = outcome.path.read_bytes()
    manifest = json.loads(outcome.manifest_path.read_text())
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() and manifest["bytes"] == len(data)
    assert manifest["mainVersion"] == manifest["activeVersion"] == "1.0.0"
    assert manifest["learnerId"] == trained.learner and manifest["format"] == "int8"
    _, heldout = split_interactions(trained.registry.get_interactions(trained.learner))
    assert manifest["check"]["heldoutSamples"] == len(heldout) > 0
    assert manifest["bytes"] < 0.3 * manifest["fp32Bytes"]
    # The file alone is the learner's model: trunk of 1.0.0 plus the learner's own trained heads.
    clone, _ = load_learner_model(trained.store.main_root, trained.store.learners_root, trained.learner)
    state, description = load_exported_state(data)
    assert description["learnerId"] == trained.learner
    reloaded = build_model()
    reloaded.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    # The check runs on the export's fixed probe batch (256 standard-normal rows, seed 0) and the held-out set.
    probe = np.random.default_rng(0).standard_normal((256, heldout.features.shape[1])).astype(np.float32)
    x = torch.from_numpy(np.concatenate([probe, heldout.features.astype(np.float32)]))
    with torch.inference_mode():
        error = (reloaded.fused_logits(x) - clone.fused_logits(x)).abs().max()
    assert float(error) == pytest.approx(manifest["check"]["maxAbsLogitError"], abs=1e-6)
    # The heads are the learner's, not the main version's: closer to the clone than to 1.0.0.
    main_heads = main_head_tensors(trained.store.main_root, "1.0.0")
    for key, learner_value in head_state(clone).items():
        to_learner = np.abs(state[key] - learner_value).max()
        assert to_learner < np.abs(state[key] - main_heads[key]).max(), key


@pytest.mark.parametrize("learner_id", ["learner-999999", "../learner-000000", "learner-000000/../x", ".hidden"])
def test_unknown_or_path_like_learners_are_refused_and_nothing_is_written(
    trained: Trained, tmp_path: Path, learner_id: str
) -> None:
    out = tmp_path / "download"
    out.mkdir()
    with pytest.raises((RegistryError, InvalidLearnerId)) as raised:
        export_learner_model(trained.registry, trained.store, learner_id, "safetensors-fp16", out)
    assert "\n" not in str(raised.value)
    assert list(out.iterdir()) == []


def test_a_tampered_clone_is_refused(trained: Trained, tmp_path: Path) -> None:
    clone = trained.store.learner_dir(trained.learner) / CLONE_NAME
    data = bytearray(clone.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # one weight becomes +inf, same size
    clone.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        export_learner_model(trained.registry, trained.store, trained.learner, "int8", tmp_path)
    assert not list(tmp_path.glob("*.int8.safetensors*"))
