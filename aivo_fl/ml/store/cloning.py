"""Per-learner clones: only the personal (trainable) tensors are stored; the rest is read from the main version.

Learner store layout: <learners_root>/<learner_id>/manifest.json for a clone that never trained;
once it trains, <learners_root>/<learner_id>/clone.safetensors alone (personal tensors, the
update and the manifest in one file, :mod:`aivo_fl.ml.store.clone_file`). A clone written by an
older release (manifest.json + heads.safetensors + delta.safetensors) is read as it is and
rewritten as one file by its next training.

A new clone is copy-on-write: its heads are byte for byte its source main version's, so it is
only a manifest recording that version and the SHA-256 of its weight file. Reads of its heads
come from the main version, verified against the main manifest and against that recorded hash;
the first training writes the learner's own heads.safetensors and the main version is never
written (versions are immutable).
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

from aivo_fl.ml.model import (
    ArchitectureSummary,
    CurriculumNet,
    architecture_summary,
    freeze_trunk,
    head_state,
    load_head_state,
    trunk_state,
)
from aivo_fl.ml.store.artifacts import (
    MAIN_WEIGHTS_NAME,
    ArtifactError,
    load_artifact,
    load_main_model,
    main_head_tensors,
    main_version_dir,
    manifest_bytes,
    validate_version,
    write_file_atomic,
)
from aivo_fl.ml.store.clone_file import CLONE_NAME, CloneFile, Shapes, encode_clone, read_clone
from aivo_fl.ml.store.clone_file import PERSONAL as PERSONAL_PREFIX
from aivo_fl.ml.store.learner_ids import learner_dir, validate_learner_id
from aivo_fl.ml.store.safe_files import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HASH_MISMATCH,
    MANIFEST_NAME,
    MISSING,
    FileRejected,
    read_manifest,
)

# The older layout's files, still read (see the module docstring).
HEADS_NAME = "heads.safetensors"
DELTA_NAME = "delta.safetensors"
LEGACY_FILES = (DELTA_NAME, HEADS_NAME, MANIFEST_NAME)
# Manifest flag of a clone whose heads are still its source main version's (no heads file yet).
COPY_ON_WRITE = "copy_on_write"


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
    trunk: dict[str, np.ndarray]
    manifest: dict[str, Any]
    architecture: ArchitectureSummary
    template: dict[str, Any]  # the clone manifest, minus the learner


@lru_cache(maxsize=4)
def _main_snapshot(main_root: Path, version: str, identity: tuple[int, ...]) -> _MainSnapshot:
    # Keyed by the identity of the version folder and weight file as well: versions are immutable,
    # and a file or folder replaced behind our back (or swapped for a link) is loaded and
    # hash-verified afresh.
    model, manifest = load_main_model(main_root, version)
    return _MainSnapshot(
        head_state(model),
        trunk_state(model),
        manifest,
        architecture_summary(model),
        clone_manifest("", version, manifest, model),
    )


def _verified_main(main_root: Path, version: str) -> _MainSnapshot:
    folder = main_version_dir(main_root, validate_version(version))
    try:
        # lstat: a file or folder swapped for a link has another inode, so it misses the cache and is refused
        folder_stat, stat = folder.lstat(), (folder / MAIN_WEIGHTS_NAME).lstat()
    except FileNotFoundError:
        load_main_model(main_root, version)  # raises the store's own clear ArtifactError
        raise
    identity = (folder_stat.st_dev, folder_stat.st_ino, stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return _main_snapshot(Path(main_root).resolve(), version, identity)


def _copy_on_write_manifest(main: _MainSnapshot, learner_id: str, **fields: Any) -> dict[str, Any]:
    template = {**main.template, "learner_id": learner_id, **fields, COPY_ON_WRITE: True}
    return {**template, "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "files": {}}


def clone_for_learner(main_root: Path, learners_root: Path, learner_id: str, version: str) -> CloneInfo:
    """Create the learner's copy-on-write clone of main `version`. Refuses to overwrite an existing clone.

    Writes one small manifest and does not fsync it: a batch of clones is made durable at once by
    the caller (`operations.learners.clone_learners`) before the registry rows that point at them.
    The verified main heads are cached per version, so a batch reads and hashes the main model once.
    """
    directory = learner_dir(learners_root, learner_id)  # validates before anything is written
    validate_version(version)
    if directory.exists():
        raise FileExistsError(f"{directory}: learner {learner_id!r} already has a clone")
    main = _verified_main(main_root, version)
    manifest = _copy_on_write_manifest(main, learner_id, created_at=datetime.now(UTC).isoformat())
    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        (staging / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
        os.replace(staging, directory)  # whole or not at all; fails if someone else created it meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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


def _trained_clone(learners_root: Path, directory: Path, heads: Shapes | None = None) -> CloneFile | None:
    """The clone's one file, verified, or None if it has not trained since the one-file layout."""
    try:
        return read_clone(learners_root, directory, heads)
    except FileRejected as exc:
        if exc.reason == MISSING and exc.path == str(directory / CLONE_NAME):
            return None
        raise


def read_learner_manifest(learners_root: Path, learner_id: str) -> dict[str, Any]:
    directory = _clone_dir(learners_root, learner_id)
    trained = _trained_clone(learners_root, directory)
    manifest = trained.manifest if trained is not None else read_manifest(learners_root, directory)
    return _clone_manifest_of(directory, learner_id, manifest)


def stored_tensor_names(learners_root: Path, learner_id: str) -> list[str]:
    """The names of the personal tensors the clone stores itself (none while copy-on-write)."""
    directory = _clone_dir(learners_root, learner_id)
    trained = _trained_clone(learners_root, directory)
    if trained is not None:
        return sorted(trained.tensors(PERSONAL_PREFIX))
    stored: list[str] = []
    for weights in read_learner_manifest(learners_root, learner_id)["files"]:  # verified reads
        stored.extend(load_artifact(learners_root, directory, weights)[0])
    return sorted(stored)


def learner_heads(
    main_root: Path, learners_root: Path, learner_id: str, shapes: Shapes | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The learner's verified head tensors (its own, or its source version's if copy-on-write) and manifest.

    ``shapes`` (the model's personal tensors) lets a one-file clone's header be checked without
    parsing its tensor table; the shapes are checked either way by whoever loads the heads.
    """
    directory = _clone_dir(learners_root, learner_id)
    trained = _trained_clone(learners_root, directory, shapes)
    if trained is not None:
        heads = {name: tensor.copy() for name, tensor in trained.tensors(PERSONAL_PREFIX).items()}
        return heads, _clone_manifest_of(directory, learner_id, trained.manifest)
    manifest = _clone_manifest_of(directory, learner_id, read_manifest(learners_root, directory))
    if HEADS_NAME in manifest["files"] or not manifest.get(COPY_ON_WRITE):
        heads, manifest = load_artifact(learners_root, directory, HEADS_NAME)
        return heads, _clone_manifest_of(directory, learner_id, manifest)
    main = _verified_main(main_root, manifest["source_version"])
    if main.manifest["files"][MAIN_WEIGHTS_NAME]["sha256"] != manifest.get("source_sha256"):
        raise FileRejected(
            HASH_MISMATCH,
            main_version_dir(main_root, manifest["source_version"]) / MAIN_WEIGHTS_NAME,
            f"not the file learner {learner_id!r} was cloned from",
        )
    return {name: tensor.copy() for name, tensor in main.heads.items()}, manifest


def load_learner_model(main_root: Path, learners_root: Path, learner_id: str) -> tuple[CurriculumNet, dict]:
    """Frozen layers from the clone's source main version, personal layers from the clone (trainable)."""
    heads, manifest = learner_heads(main_root, learners_root, learner_id)
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
    heads, manifest = learner_heads(main_root, learners_root, learner_id)
    return subtract(heads, main_head_tensors(main_root, manifest["source_version"]))


def remove_learner(learners_root: Path, learner_id: str) -> bool:
    """Delete a clone; True if there was one. Renamed away first so readers never see half a dir."""
    directory = learner_dir(learners_root, learner_id)
    if not directory.exists():
        return False
    trash = directory.parent / f".{validate_learner_id(learner_id)}.trash-{uuid.uuid4().hex}"
    os.replace(directory, trash)
    shutil.rmtree(trash)
    return True


def rebased(
    main_root: Path, learner_id: str, heads: dict[str, np.ndarray], manifest: dict[str, Any], new_version: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A clone's personal tensors and manifest moved onto `new_version`, keeping its personalisation
    (in memory; :func:`rebase_clone` writes them).

    Aggregated versions share the frozen layers and differ in the personal ones, so the clone
    keeps its personal offset on top of the new main: new main + (clone - old main). The learner
    gets what the population taught the main model since, and keeps what is its own. (Its own
    share of that move, its weight in the average, is counted twice: at population scale that
    is a fraction of a percent of its update, and the proximal term bounds the offset anyway.)

    A version with different frozen layers (a retrain from scratch, or another depth) makes the
    personal layers trained on the old features meaningless: the clone restarts from the new main.
    A clone that never trained has nothing personal to keep and stays copy-on-write.
    """
    old_version = manifest["source_version"]
    old, new = _verified_main(main_root, old_version), _verified_main(main_root, validate_version(new_version))
    moved = {"created_at": manifest.get("created_at"), "rebased_from": old_version}
    now = datetime.now(UTC).isoformat()
    if manifest.get(COPY_ON_WRITE) and HEADS_NAME not in manifest.get("files", {}):
        return {k: v.copy() for k, v in new.heads.items()}, _copy_on_write_manifest(
            new, learner_id, **moved, rebased_at=now
        )
    same_trunk = old.trunk.keys() == new.trunk.keys() and all(
        np.array_equal(old.trunk[k], new.trunk[k]) for k in new.trunk
    )
    if same_trunk:
        moved_heads = {k: new.heads[k] + (heads[k] - old.heads[k]) for k in new.heads}
    else:
        moved_heads = {k: v.copy() for k, v in new.heads.items()}
    new_manifest = {
        **new.template,
        "learner_id": learner_id,
        **moved,
        "personalisation_kept": same_trunk,
        "rebased_at": now,
    }
    return moved_heads, new_manifest


def rebase_clone(main_root: Path, learners_root: Path, learner_id: str, new_version: str) -> dict[str, Any]:
    """Move a clone onto `new_version` on disk (see :func:`rebased`). Returns the new manifest.

    A stale update (relative to the old version) is dropped: the clone file keeps its personal
    tensors only until the next training.
    """
    directory = learner_dir(learners_root, learner_id)
    heads, manifest = rebased(main_root, learner_id, *learner_heads(main_root, learners_root, learner_id), new_version)
    if manifest.get(COPY_ON_WRITE):
        write_file_atomic(directory / MANIFEST_NAME, manifest_bytes(manifest))
        for name in (CLONE_NAME, HEADS_NAME, DELTA_NAME):
            (directory / name).unlink(missing_ok=True)
    else:
        save_trained_clone(directory, heads, {}, manifest)
    return read_learner_manifest(learners_root, learner_id)


def save_trained_clone(
    directory: Path,
    personal: dict[str, np.ndarray],
    update: dict[str, np.ndarray],
    manifest: dict[str, Any],
    *,
    sync: bool = True,
) -> bytes:
    """Write the clone as its one file (temp file + rename in its folder; ``sync`` as
    :func:`write_file_atomic`), then drop the files of the layouts it replaces. Returns the bytes.

    The one file is complete before anything is removed, and it wins over whatever is left, so a
    crash in between loses nothing.
    """
    fields = {k: v for k, v in manifest.items() if k not in (COPY_ON_WRITE, "files", "format", "format_version")}
    data = encode_clone(personal, update, fields)
    write_file_atomic(directory / CLONE_NAME, data, sync=sync)
    for name in LEGACY_FILES:
        (directory / name).unlink(missing_ok=True)
    return data
