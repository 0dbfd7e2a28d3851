"""Weight artifacts: safetensors + a JSON manifest with hashes, written atomically.

Loading never unpickles: weights are parsed by ``safetensors.numpy`` from bytes that
:mod:`aivo_fl.ml.store.safe_files` read from a regular file inside the store, capped at the manifest's
size and checked against its sha256.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from aivo_fl.ml.model import (
    PERSONALIZATION_DEPTHS,
    TRUNK_WIDTHS,
    CurriculumNet,
    architecture_summary,
    build_model,
    head_layer_names,
    trunk_layer_names,
)
from aivo_fl.ml.samples import HEAD_CLASSES, NUM_FEATURES
from aivo_fl.ml.store.safe_files import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    ArtifactError,
    read_verified,
    sha256_bytes,
)

MAIN_WEIGHTS_NAME = "model.safetensors"
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_file_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write to a temp file in the same directory, fsync, then os.replace over `path`.

    ``sync=False`` skips the fsyncs: for a batch the caller makes durable at once (``os.sync``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if sync:
        _fsync_dir(path.parent)


def encode_tensors(tensors: dict[str, np.ndarray]) -> bytes:
    return st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()})


def file_record(data: bytes) -> dict[str, Any]:
    return {"sha256": sha256_bytes(data), "bytes": len(data)}


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def save_artifact(
    directory: Path,
    tensors: dict[str, np.ndarray],
    manifest: dict[str, Any],
    weights_name: str = MAIN_WEIGHTS_NAME,
    extra_files: Mapping[str, dict[str, np.ndarray]] | None = None,
    *,
    sync: bool = True,
) -> None:
    """Write `weights_name` (and `extra_files`, more safetensors files) + manifest.json into `directory`.

    A new directory is assembled as a temp sibling and renamed into place in one step. An existing
    directory (e.g. a learner dir that also holds a delta) gets per-file atomic replaces, weights
    first and manifest last; a crash in between leaves a hash mismatch that loading reports.
    Entries already in ``manifest["files"]`` (other weight files) are kept. ``sync=False``: see
    :func:`write_file_atomic`.
    """
    directory = Path(directory)
    files = {weights_name: encode_tensors(tensors)}
    files.update({name: encode_tensors(dict(extra)) for name, extra in (extra_files or {}).items()})
    full = dict(manifest)
    full["format"] = FORMAT_NAME
    full["format_version"] = FORMAT_VERSION
    full["files"] = {**dict(manifest.get("files", {})), **{name: file_record(data) for name, data in files.items()}}
    manifest_data = manifest_bytes(full)

    if directory.exists():
        for name, data in files.items():
            write_file_atomic(directory / name, data, sync=sync)
        write_file_atomic(directory / MANIFEST_NAME, manifest_data, sync=sync)
        return

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        for name, data in files.items():
            write_file_atomic(staging / name, data, sync=sync)
        write_file_atomic(staging / MANIFEST_NAME, manifest_data, sync=sync)
        os.replace(staging, directory)  # fails if someone else created it meanwhile: no clobbering
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if sync:
        _fsync_dir(directory.parent)


def decode_tensors(data: bytes, origin: Path | str) -> dict[str, np.ndarray]:
    """Parse safetensors bytes; anything else (a pickle, garbage) is an ArtifactError."""
    if len(data) < 8:
        raise ArtifactError(f"{origin}: too short to be a safetensors file ({len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(_MAX_HEADER, len(data) - 8) or data[8:9] != b"{":
        raise ArtifactError(f"{origin}: not a safetensors file (bad header)")
    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises its own error types for malformed input
        raise ArtifactError(f"{origin}: not a valid safetensors file ({exc})") from exc


def load_artifact(
    store_root: Path, directory: Path, weights_name: str = MAIN_WEIGHTS_NAME
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Verified tensors and manifest of ``directory`` (which must lie inside ``store_root``)."""
    data, manifest = read_verified(store_root, directory, weights_name)
    return decode_tensors(data, Path(directory) / weights_name), manifest


# ---- main model store: <main_root>/<version>/model.safetensors + manifest.json ----


def validate_version(version: str) -> str:
    if not isinstance(version, str) or not _SEMVER.match(version):
        raise ValueError(f"invalid model version {version!r}: expected semver like '1.0.0'")
    return version


def next_version(version: str, bump: str = "minor") -> str:
    """Semver bump: a trained main model takes the next major version, an aggregated one a minor."""
    major, minor, _ = (int(p) for p in validate_version(version).split("."))
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    raise ValueError(f"bump must be major or minor, got {bump!r}")


def trained_version(version: str) -> str:
    """The trained (non-aggregated) version an aggregated version descends from: its major x.0.0."""
    return f"{validate_version(version).split('.')[0]}.0.0"


def main_version_dir(main_root: Path, version: str) -> Path:
    return Path(main_root) / validate_version(version)


def list_main_versions(main_root: Path) -> list[str]:
    """Stored versions in semver order (directories with a manifest only)."""
    root = Path(main_root)
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if _SEMVER.match(p.name) and (p / MANIFEST_NAME).is_file()]
    return sorted(found, key=lambda v: tuple(int(part) for part in v.split(".")))


def model_description(model: CurriculumNet) -> dict[str, Any]:
    return {
        "architecture": asdict(architecture_summary(model)),
        "frozen_layers": trunk_layer_names(model),
        "trainable_layers": head_layer_names(model),
        "model_config": {
            "num_features": NUM_FEATURES,
            "trunk_widths": list(TRUNK_WIDTHS),
            "head_classes": dict(HEAD_CLASSES),
            "personalized_from_layer": model.frozen_layers,
        },
    }


def save_main_model(
    main_root: Path,
    version: str,
    model: CurriculumNet,
    metrics: dict[str, Any],
    data_seed: int,
    parent_version: str | None = None,
    extra_files: Mapping[str, dict[str, np.ndarray]] | None = None,
) -> Path:
    """Store an immutable main version; refuses to overwrite an existing one. ``extra_files`` (name
    -> tensors) are stored beside the weights and listed in the manifest (e.g. optimizer state)."""
    directory = main_version_dir(main_root, version)
    if parent_version is not None:
        validate_version(parent_version)
    if directory.exists():
        raise ArtifactError(f"{directory}: main version {version} already exists; versions are immutable")
    tensors = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    manifest = {
        "kind": "main-model",
        "version": version,
        "parent_version": parent_version,
        "created_at": datetime.now(UTC).isoformat(),
        "metrics": metrics,
        "data_seed": data_seed,
        **model_description(model),
    }
    save_artifact(directory, tensors, manifest, MAIN_WEIGHTS_NAME, extra_files)
    return directory


def _frozen_layers(manifest: dict[str, Any], directory: Path) -> int:
    value = manifest.get("model_config", {}).get("personalized_from_layer")
    if value not in PERSONALIZATION_DEPTHS.values():
        raise ArtifactError(f"{directory}: manifest has no valid personalization depth ({value!r})")
    return int(value)


def load_main_model(main_root: Path, version: str) -> tuple[CurriculumNet, dict[str, Any]]:
    directory = main_version_dir(main_root, version)
    tensors, manifest = load_artifact(main_root, directory, MAIN_WEIGHTS_NAME)
    model = build_model(frozen_layers=_frozen_layers(manifest, directory))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ArtifactError(
            f"{directory / MAIN_WEIGHTS_NAME}: tensors do not match the architecture "
            f"(missing={missing}, unexpected={extra})"
        )
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ArtifactError(
                f"{directory / MAIN_WEIGHTS_NAME}: tensor {key!r} has shape {value.shape}, "
                f"expected {tuple(expected[key].shape)}"
            )
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in tensors.items()})
    model.eval()
    return model, manifest


def main_head_tensors(main_root: Path, version: str) -> dict[str, np.ndarray]:
    """Only the personal (trainable) tensors of a main version (verified), without building a model."""
    directory = main_version_dir(main_root, version)
    tensors, manifest = load_artifact(main_root, directory, MAIN_WEIGHTS_NAME)
    layers = manifest.get("trainable_layers")
    if not isinstance(layers, list) or not layers:
        raise ArtifactError(f"{directory}: manifest does not list the trainable layers")
    prefixes = tuple(f"{layer}." for layer in layers)
    return {k: v.astype(np.float32) for k, v in tensors.items() if k.startswith(prefixes)}
