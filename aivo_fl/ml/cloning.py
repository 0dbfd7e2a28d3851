"""Per-learner clones: only the personal (trainable) tensors are stored; the rest is read from the main version.

Learner store layout: <learners_root>/<learner_id>/heads.safetensors + manifest.json
(+ delta.safetensors once the learner has trained locally).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from aivo_fl.ml.artifacts import (
    MAIN_WEIGHTS_NAME,
    ArtifactError,
    load_artifact,
    load_main_model,
    main_head_tensors,
    main_version_dir,
    save_artifact,
    validate_version,
)
from aivo_fl.ml.learner_ids import learner_dir, validate_learner_id
from aivo_fl.ml.model import (
    ArchitectureSummary,
    CurriculumNet,
    architecture_summary,
    freeze_trunk,
    head_state,
    load_head_state,
    trunk_state,
)
from aivo_fl.ml.safe_files import read_manifest

HEADS_NAME = "heads.safetensors"
DELTA_NAME = "delta.safetensors"


@dataclass(frozen=True)
class CloneInfo:
    learner_id: str
    source_version: str
    path: Path
    architecture: ArchitectureSummary
    bytes_on_disk: int


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def clone_manifest(
    learner_id: str, source_version: str, main_manifest: dict[str, Any], model: CurriculumNet
) -> dict[str, Any]:
    return {
        "kind": "learner-clone",
        "learner_id": learner_id,
        "source_version": source_version,
        "source_sha256": main_manifest["files"][MAIN_WEIGHTS_NAME]["sha256"],
        "created_at": datetime.now(UTC).isoformat(),
        "architecture": asdict(architecture_summary(model)),
        "frozen_layers": main_manifest.get("frozen_layers", []),
        "trainable_layers": main_manifest.get("trainable_layers", []),
    }


@dataclass(frozen=True)
class _MainSnapshot:
    heads: dict[str, np.ndarray]
    manifest: dict[str, Any]
    architecture: ArchitectureSummary
    template: dict[str, Any]  # the clone manifest, minus the learner


@lru_cache(maxsize=4)
def _main_snapshot(main_root: Path, version: str, mtime_ns: int, size: int) -> _MainSnapshot:
    # Keyed by the weight file's mtime and size as well: versions are immutable, and a file
    # replaced behind our back is loaded (and hash-verified) afresh.
    model, manifest = load_main_model(main_root, version)
    return _MainSnapshot(
        head_state(model), manifest, architecture_summary(model), clone_manifest("", version, manifest, model)
    )


def _verified_main(main_root: Path, version: str) -> _MainSnapshot:
    weights = main_version_dir(main_root, validate_version(version)) / MAIN_WEIGHTS_NAME
    try:
        stat = weights.lstat()  # lstat: a file swapped for a link changes the key and is refused
    except FileNotFoundError:
        load_main_model(main_root, version)  # raises the store's own clear ArtifactError
        raise
    return _main_snapshot(Path(main_root).resolve(), version, stat.st_mtime_ns, stat.st_size)


def clone_for_learner(main_root: Path, learners_root: Path, learner_id: str, version: str) -> CloneInfo:
    """Create the learner's clone of main `version`. Refuses to overwrite an existing clone.

    The verified main heads are cached per version, so cloning a batch of learners reads and
    hashes the main model once, not once per learner.
    """
    directory = learner_dir(learners_root, learner_id)  # validates before anything is written
    validate_version(version)
    if directory.exists():
        raise FileExistsError(f"{directory}: learner {learner_id!r} already has a clone")
    main = _verified_main(main_root, version)
    manifest = {**main.template, "learner_id": learner_id, "created_at": datetime.now(UTC).isoformat()}
    save_artifact(directory, main.heads, manifest, HEADS_NAME)
    return CloneInfo(
        learner_id=learner_id,
        source_version=version,
        path=directory,
        architecture=main.architecture,
        bytes_on_disk=directory_size(directory),
    )


def _clone_manifest_of(directory: Path, learner_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
    if manifest.get("kind") != "learner-clone" or manifest.get("learner_id") != learner_id:
        raise ArtifactError(f"{directory}: manifest does not describe a clone of learner {learner_id!r}")
    validate_version(manifest.get("source_version", ""))
    return manifest


def _clone_dir(learners_root: Path, learner_id: str) -> Path:
    directory = learner_dir(learners_root, learner_id)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: learner {learner_id!r} has no clone")
    return directory


def read_learner_manifest(learners_root: Path, learner_id: str) -> dict[str, Any]:
    directory = _clone_dir(learners_root, learner_id)
    return _clone_manifest_of(directory, learner_id, read_manifest(learners_root, directory))


def learner_heads(learners_root: Path, learner_id: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The learner's verified head tensors and manifest."""
    directory = _clone_dir(learners_root, learner_id)
    heads, manifest = load_artifact(learners_root, directory, HEADS_NAME)
    return heads, _clone_manifest_of(directory, learner_id, manifest)


def load_learner_model(main_root: Path, learners_root: Path, learner_id: str) -> tuple[CurriculumNet, dict]:
    """Frozen layers from the clone's source main version, personal layers from the clone (trainable)."""
    heads, manifest = learner_heads(learners_root, learner_id)
    model, _ = load_main_model(main_root, manifest["source_version"])
    try:
        load_head_state(model, heads)
    except ValueError as exc:
        raise ArtifactError(f"{learner_dir(learners_root, learner_id) / HEADS_NAME}: {exc}") from exc
    freeze_trunk(model)
    model.eval()
    return model, manifest


def subtract(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if set(a) != set(b):
        raise ValueError(f"tensor keys differ: {sorted(set(a) ^ set(b))}")
    return {k: (a[k].astype(np.float32) - b[k].astype(np.float32)) for k in a}


def weight_delta(main_root: Path, learners_root: Path, learner_id: str) -> dict[str, np.ndarray]:
    """Learner personal tensors minus those of its source main version."""
    heads, manifest = learner_heads(learners_root, learner_id)
    return subtract(heads, main_head_tensors(main_root, manifest["source_version"]))


def list_learners(learners_root: Path) -> list[str]:
    root = Path(learners_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def remove_learner(learners_root: Path, learner_id: str) -> bool:
    """Delete a clone; True if there was one. Renamed away first so readers never see half a dir."""
    directory = learner_dir(learners_root, learner_id)
    if not directory.exists():
        return False
    trash = directory.parent / f".{validate_learner_id(learner_id)}.trash-{uuid.uuid4().hex}"
    os.replace(directory, trash)
    shutil.rmtree(trash)
    return True


def main_exists(main_root: Path, version: str) -> bool:
    return main_version_dir(main_root, version).is_dir()


def rebase_clone(main_root: Path, learners_root: Path, learner_id: str, new_version: str) -> dict[str, Any]:
    """Move a clone onto `new_version`, keeping its personalisation. Returns the new manifest.

    Aggregated versions share the frozen layers and differ in the personal ones, so the clone
    keeps its personal offset on top of the new main: new main + (clone - old main). The learner
    gets what the population taught the main model since, and keeps what is its own. (Its own
    share of that move, its weight in the average, is counted twice: at population scale that
    is a fraction of a percent of its update, and the proximal term bounds the offset anyway.)

    A version with different frozen layers (a retrain from scratch, or another depth) makes the
    personal layers trained on the old features meaningless: the clone restarts from the new main.
    A stale delta (relative to the old version) is dropped.
    """
    directory = learner_dir(learners_root, learner_id)
    heads, manifest = learner_heads(learners_root, learner_id)
    old_version = manifest["source_version"]
    old_model, _ = load_main_model(main_root, old_version)
    new_model, new_main_manifest = load_main_model(main_root, validate_version(new_version))
    old_frozen, new_frozen = trunk_state(old_model), trunk_state(new_model)
    same_trunk = old_frozen.keys() == new_frozen.keys() and all(
        np.array_equal(old_frozen[k], new_frozen[k]) for k in new_frozen
    )
    old_main, new_main = head_state(old_model), head_state(new_model)
    rebased = {k: new_main[k] + (heads[k] - old_main[k]) for k in new_main} if same_trunk else new_main
    new_manifest = {
        **clone_manifest(learner_id, new_version, new_main_manifest, new_model),
        "created_at": manifest.get("created_at"),
        "rebased_from": old_version,
        "personalisation_kept": same_trunk,
        "rebased_at": datetime.now(UTC).isoformat(),
        "files": {},  # forget the old delta's record; only the heads are current
    }
    save_artifact(directory, rebased, new_manifest, HEADS_NAME)
    (directory / DELTA_NAME).unlink(missing_ok=True)
    return read_learner_manifest(learners_root, learner_id)
