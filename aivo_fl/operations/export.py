"""A learner's personalized model exported as one file for the app, with its manifest beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from aivo_fl.ml.store.artifacts import sha256_bytes, write_file_atomic
from aivo_fl.ml.store.cloning import load_learner_model
from aivo_fl.ml.store.export import SUFFIXES, check_export, export_model, fp32_size
from aivo_fl.ml.store.learner_ids import validate_learner_id
from aivo_fl.operations.learners import split_interactions
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry, RegistryError

MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class ExportOutcome:
    path: Path
    manifest_path: Path
    manifest: dict[str, Any]


def export_path(learner_id: str, fmt: str, output: Path | None) -> Path:
    """`output`, or `<learner><suffix>` inside it when it is a folder (the working folder by default)."""
    default_name = f"{validate_learner_id(learner_id)}{SUFFIXES[fmt]}"
    if output is None:
        return Path.cwd() / default_name
    return output / default_name if output.is_dir() else output


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def export_learner_model(
    registry: ModelRegistry, store: ModelStore, learner_id: str, fmt: str, output: Path | None = None
) -> ExportOutcome:
    """Trunk of the clone's main version + the learner's heads, as one `fmt` file, checked before it is written.

    Everything read is verified (the clone's and the main version's hashes, via the store's loaders);
    the file is re-read and compared with the fp32 model on the learner's held-out interactions
    (`check_export`) before anything is written. The manifest `<file>.manifest.json` records the
    versions, the file's sha256 and size, and that comparison.
    """
    validate_learner_id(learner_id)
    record = registry.get_personalized_model(learner_id)
    if record is None:
        raise RegistryError(f"Learner {learner_id} has no personalized model")
    model, clone = load_learner_model(store.main_root, store.learners_root, learner_id)
    _, heldout = split_interactions(registry.get_interactions(learner_id))
    active = registry.get_active_version()
    description = {"learnerId": learner_id, "mainVersion": clone["source_version"]}
    data = export_model(model, fmt, description)
    check = check_export(model, data, fmt, heldout)
    path = export_path(learner_id, fmt, output)
    manifest = {
        **description,
        "format": fmt,
        "file": path.name,
        "sha256": sha256_bytes(data),
        "bytes": len(data),
        "fp32Bytes": fp32_size(model),
        "activeVersion": active.version if active else None,
        "cloneCreatedAt": clone.get("created_at"),
        "lastTrainedAt": (clone.get("last_training") or {}).get("finished_at"),
        "exportedAt": datetime.now(UTC).isoformat(),
        "check": check.to_json(),
        "software": {"aivo-fl": _package_version("aivo-fl"), "torch": torch.__version__}
        | ({"onnx": _package_version("onnx")} if fmt == "onnx" else {}),
    }
    manifest_path = path.with_name(path.name + MANIFEST_SUFFIX)
    write_file_atomic(path, data)
    write_file_atomic(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return ExportOutcome(path, manifest_path, manifest)
