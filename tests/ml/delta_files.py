"""Delta files laid out as local training writes them: <root>/<learner>/delta.safetensors + manifest.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aivo_fl.ml.store.artifacts import encode_tensors, file_record
from aivo_fl.ml.store.cloning import DELTA_NAME
from aivo_fl.ml.store.safe_files import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME


def vouch(path: Path) -> Path:
    """Make the folder's manifest record ``path`` exactly as it is now (as if the attacker wrote both)."""
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": "learner-clone"}
    manifest["files"] = {path.name: file_record(path.read_bytes())}
    (path.parent / MANIFEST_NAME).write_text(json.dumps(manifest))
    return path


def write_raw(root: Path, learner_id: str, data: bytes) -> Path:
    """``data`` as the learner's delta, with a manifest that vouches for it."""
    path = root / learner_id / DELTA_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return vouch(path)


def write_delta(root: Path, learner_id: str, tensors: dict[str, np.ndarray]) -> Path:
    return write_raw(root, learner_id, encode_tensors(tensors))
