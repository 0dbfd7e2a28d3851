from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from aivo_fl.ml.model import architecture_summary, build_model
from aivo_fl.ml.store.artifacts import (
    MANIFEST_NAME,
    ArtifactError,
    list_main_versions,
    load_artifact,
    load_main_model,
    main_version_dir,
    save_artifact,
    save_main_model,
    write_file_atomic,
)

TENSORS = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, dtype=np.float32)}


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    directory = tmp_path / "art"
    save_artifact(directory, TENSORS, {"note": "hello"})
    return directory


def test_roundtrip_and_manifest_contents(artifact: Path) -> None:
    tensors, manifest = load_artifact(artifact.parent, artifact)
    for k, v in TENSORS.items():
        np.testing.assert_array_equal(tensors[k], v)
    record = manifest["files"]["model.safetensors"]
    assert record["bytes"] == (artifact / "model.safetensors").stat().st_size
    assert len(record["sha256"]) == 64 and manifest["format_version"] == 1 and manifest["note"] == "hello"
    assert sorted(p.name for p in artifact.parent.iterdir()) == ["art"]  # no temp leftovers


def test_corrupted_weights_are_refused(artifact: Path) -> None:
    path = artifact / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.safetensors: hash mismatch"):
        load_artifact(artifact.parent, artifact)


def test_truncated_weights_are_refused(artifact: Path) -> None:
    path = artifact / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="truncated"):
        load_artifact(artifact.parent, artifact)


def test_pickle_is_never_unpickled(tmp_path: Path, artifact: Path) -> None:
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):  # executing this would create the marker file
            return (Path.touch, (marker,))

    payload = pickle.dumps({"a": Boom()})
    path = artifact / "model.safetensors"
    path.write_bytes(payload)
    # Even with a manifest that vouches for the pickle's hash, it is rejected as not safetensors.
    manifest = json.loads((artifact / MANIFEST_NAME).read_text())
    import hashlib

    manifest["files"]["model.safetensors"] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    (artifact / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        load_artifact(artifact.parent, artifact)
    assert not marker.exists()


def test_manifest_hash_mismatch(artifact: Path) -> None:
    manifest = json.loads((artifact / MANIFEST_NAME).read_text())
    manifest["files"]["model.safetensors"]["sha256"] = "0" * 64
    (artifact / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="hash mismatch"):
        load_artifact(artifact.parent, artifact)


@pytest.mark.parametrize("missing", ["model.safetensors", MANIFEST_NAME])
def test_missing_files(artifact: Path, missing: str) -> None:
    (artifact / missing).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(artifact.parent, artifact)


def test_missing_directory_and_bad_manifest(tmp_path: Path, artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="missing file"):
        load_artifact(tmp_path, tmp_path / "nope")
    (artifact / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(artifact.parent, artifact)
    (artifact / MANIFEST_NAME).write_text(json.dumps({"format": "other", "files": {}}))
    with pytest.raises(ArtifactError, match="unsupported format"):
        load_artifact(artifact.parent, artifact)


def test_resaving_existing_directory_keeps_other_files(artifact: Path) -> None:
    (artifact / "other.bin").write_bytes(b"x")
    save_artifact(artifact, {"a": np.zeros(2, dtype=np.float32)}, {"note": "v2"})
    tensors, manifest = load_artifact(artifact.parent, artifact)
    np.testing.assert_array_equal(tensors["a"], np.zeros(2, dtype=np.float32))
    assert manifest["note"] == "v2" and (artifact / "other.bin").exists()
    assert not [p for p in artifact.iterdir() if p.name.startswith(".")]


def test_write_file_atomic(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    write_file_atomic(target, b"one")
    write_file_atomic(target, b"two")
    assert target.read_bytes() == b"two" and [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_main_model_roundtrip(tmp_path: Path) -> None:
    model = build_model(seed=9)
    directory = save_main_model(tmp_path, "1.0.0", model, {"val_accuracy": 0.5}, data_seed=3)
    assert directory == main_version_dir(tmp_path, "1.0.0")
    loaded, manifest = load_main_model(tmp_path, "1.0.0")
    x = torch.randn(5, 256)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    summary = architecture_summary(model)
    assert manifest["architecture"]["total_params"] == summary.total_params
    assert manifest["frozen_layers"] == model.layer_names()[: model.frozen_layers]
    assert manifest["model_config"]["personalized_from_layer"] == model.frozen_layers
    assert len(manifest["trainable_layers"]) == summary.trainable_layers
    assert manifest["data_seed"] == 3 and manifest["metrics"] == {"val_accuracy": 0.5}
    assert manifest["parent_version"] is None
    save_main_model(tmp_path, "1.1.0", model, {}, data_seed=3, parent_version="1.0.0")
    assert list_main_versions(tmp_path) == ["1.0.0", "1.1.0"]
    with pytest.raises(ArtifactError, match="immutable"):
        save_main_model(tmp_path, "1.0.0", model, {}, data_seed=3)


@pytest.mark.parametrize("version", ["1.0", "../1.0.0", "v1.0.0", "", "1.0.0/.."])
def test_invalid_versions_are_refused(tmp_path: Path, version: str) -> None:
    with pytest.raises(ValueError, match="invalid model version"):
        save_main_model(tmp_path, version, build_model(), {}, data_seed=0)
    assert list(tmp_path.iterdir()) == []


def test_main_model_with_wrong_tensors(tmp_path: Path) -> None:
    save_artifact(main_version_dir(tmp_path, "2.0.0"), TENSORS, {"model_config": {"personalized_from_layer": 4}})
    with pytest.raises(ArtifactError, match="do not match the architecture"):
        load_main_model(tmp_path, "2.0.0")
    save_artifact(main_version_dir(tmp_path, "3.0.0"), TENSORS, {"model_config": {"personalized_from_layer": 7}})
    with pytest.raises(ArtifactError, match="no valid personalization depth"):
        load_main_model(tmp_path, "3.0.0")
