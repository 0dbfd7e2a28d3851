"""On-device style fine-tuning of a learner's clone: its personal layers, delta written atomically."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aivo_fl.ml.aggregation.base import delta_norm
from aivo_fl.ml.artifacts import (
    encode_tensors,
    file_record,
    main_head_tensors,
    save_artifact,
    validate_version,
    write_file_atomic,
)
from aivo_fl.ml.batched_training import LearnerBatch, LocalTrainingConfig, learner_key, train_one
from aivo_fl.ml.cloning import (
    COPY_ON_WRITE,
    DELTA_NAME,
    HEADS_NAME,
    load_learner_model,
    read_learner_manifest,
    rebase_clone,
    subtract,
)
from aivo_fl.ml.data import PRIMARY_HEAD, Samples
from aivo_fl.ml.learner_ids import learner_dir
from aivo_fl.ml.model import evaluate, head_state, mean_loss, samples_to_tensors
from aivo_fl.ml.training import configure_cpu


@dataclass(frozen=True)
class TrainingSessionResult:
    learner_id: str
    source_version: str
    rebased_from: str | None
    samples: int
    epochs: int
    loss_before: float  # held-out, mean over heads
    accuracy_before: float  # held-out, primary head
    loss_after: float
    accuracy_after: float
    delta_norm: float
    delta_path: Path
    started_at: datetime
    finished_at: datetime
    seconds: float

    @property
    def improvement(self) -> float:
        return self.accuracy_after - self.accuracy_before

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["delta_path"] = str(self.delta_path)
        out["started_at"] = self.started_at.isoformat()
        out["finished_at"] = self.finished_at.isoformat()
        return out


def _rebase_if_behind(main_root: Path, learners_root: Path, learner_id: str, active_version: str) -> str | None:
    """Rebase the clone onto `active_version` if it was made from another; the version it left, or None."""
    source = read_learner_manifest(learners_root, learner_id)["source_version"]
    if source == active_version:
        return None
    rebase_clone(main_root, learners_root, learner_id, active_version)
    return source


def train_learner(
    main_root: Path,
    learners_root: Path,
    learner_id: str,
    train: Samples,
    heldout: Samples,
    active_version: str,
    config: LocalTrainingConfig | None = None,
    num_threads: int | None = None,
) -> TrainingSessionResult:
    """Fine-tune the learner's personal layers on `train`, report before/after on `heldout`.

    If the clone was made from an older main version it is rebased onto `active_version` first
    (keeping its personalisation). The delta is this session's update only (trained minus the
    clone as it started), the FedAvg client update: the personal offset a learner carries from
    earlier sessions is not sent again every week.
    """
    config = config or LocalTrainingConfig()
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    if len(train) == 0:
        raise ValueError(f"learner {learner_id!r}: no training samples")
    validate_version(active_version)
    directory = learner_dir(learners_root, learner_id)
    rebased_from = _rebase_if_behind(main_root, learners_root, learner_id, active_version)
    model, manifest = load_learner_model(main_root, learners_root, learner_id)
    before = evaluate(model, heldout)

    start = head_state(model)
    anchor = {k: torch.from_numpy(v) for k, v in main_head_tensors(main_root, active_version).items()}
    configure_cpu(num_threads)
    train_one(model, LearnerBatch(learner_key(learner_id), *samples_to_tensors(train)), anchor, config)
    model.eval()
    after = evaluate(model, heldout)

    heads = head_state(model)
    delta = subtract(heads, start)
    delta_bytes = encode_tensors(delta)
    write_file_atomic(directory / DELTA_NAME, delta_bytes)

    finished_at = datetime.now(UTC)
    result = TrainingSessionResult(
        learner_id=learner_id,
        source_version=active_version,
        rebased_from=rebased_from,
        samples=len(train),
        epochs=config.epochs,
        loss_before=mean_loss(before),
        accuracy_before=before[PRIMARY_HEAD]["accuracy"],
        loss_after=mean_loss(after),
        accuracy_after=after[PRIMARY_HEAD]["accuracy"],
        delta_norm=delta_norm(delta),
        delta_path=directory / DELTA_NAME,
        started_at=started_at,
        finished_at=finished_at,
        seconds=time.perf_counter() - started,
    )
    _save_trained(directory, heads, manifest, delta_bytes, result)
    return result


def _save_trained(
    directory: Path,
    heads: dict[str, np.ndarray],
    manifest: dict[str, Any],
    delta_bytes: bytes,
    result: TrainingSessionResult,
) -> None:
    # Manifest is written last (inside save_artifact), so it only ever points at complete files.
    new_manifest = {
        **{k: v for k, v in manifest.items() if k != COPY_ON_WRITE},  # its own heads from now on
        "files": {DELTA_NAME: file_record(delta_bytes)},
        "last_training": result.to_json(),
    }
    save_artifact(directory, heads, new_manifest, HEADS_NAME)
