"""Local fine-tuning of learners' clones, many at once: their personal layers, each clone written as one file."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aivo_fl.ml.aggregation.base import delta_norm
from aivo_fl.ml.model import mean_loss, samples_to_tensors
from aivo_fl.ml.runtime import configure_cpu
from aivo_fl.ml.samples import PRIMARY_HEAD, LearnerData, Samples
from aivo_fl.ml.store.artifacts import ArtifactError, load_main_model, validate_version
from aivo_fl.ml.store.clone_file import CLONE_NAME
from aivo_fl.ml.store.cloning import learner_heads, rebased, save_trained_clone
from aivo_fl.ml.store.learner_ids import learner_dir
from aivo_fl.ml.training.batched import evaluate_many, train_personal_and_update
from aivo_fl.ml.training.local import LearnerBatch, LocalTrainingConfig, learner_key, personal_tensors


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


WRITERS = 8  # threads writing a batch's clone files (see train_learners)

# What one learner's data or files can be wrong with; anything else is not the learner's and fails the batch.
LEARNER_ERRORS = (ArtifactError, OSError, ValueError)


@dataclass
class TrainedLearners:
    results: list[TrainingSessionResult] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)  # learner id -> what went wrong


@dataclass
class _Prepared:
    data: LearnerData
    directory: Path
    rebased_from: str | None
    manifest: dict[str, Any]
    start: dict[str, np.ndarray]


def _prepare(
    main_root: Path, learners_root: Path, data: LearnerData, active_version: str, shapes: dict[str, tuple[int, ...]]
) -> _Prepared:
    if len(data.train) == 0:
        raise ValueError(f"learner {data.learner_id!r}: no training samples")
    directory = learner_dir(learners_root, data.learner_id)  # validates the id before any file is touched
    start, manifest = learner_heads(main_root, learners_root, data.learner_id, shapes)
    rebased_from = None
    if manifest["source_version"] != active_version:  # the clone is behind: it moves, keeping what is its own
        rebased_from = manifest["source_version"]
        start, manifest = rebased(main_root, data.learner_id, start, manifest, active_version)
    found = {k: tuple(v.shape) for k, v in start.items()}
    if found != shapes:
        raise ArtifactError(f"{directory}: personal tensors {found}, expected {shapes}")
    return _Prepared(data, directory, rebased_from, manifest, start)


def train_learners(
    main_root: Path,
    learners_root: Path,
    learners: Sequence[LearnerData],
    active_version: str,
    config: LocalTrainingConfig | None = None,
    num_threads: int | None = None,
    *,
    sync: bool = True,
) -> TrainedLearners:
    """Fine-tune many learners' personal layers at once (`train_many`), each on its own `train`,
    reporting before/after on its `heldout` (`evaluate_many`).

    A clone made from an older main version is rebased onto `active_version` first (keeping its
    personalisation), so every learner trains on the active version's frozen layers. The clone's
    personal layers train from where they were; the delta the learner sends is the same data
    fitted from the active version's layers, normalized by its local steps
    (:func:`train_personal_and_update`): the personalization a learner keeps is never sent, and
    the main model's own progress is not counted twice. A learner whose id, data or files are
    wrong is reported in `failures` and the others go on. ``sync=False`` leaves durability to the
    caller (one ``os.sync`` per batch before the registry records the sessions).
    """
    config = config or LocalTrainingConfig()
    started_at = datetime.now(UTC)
    validate_version(active_version)
    configure_cpu(num_threads)
    model, _ = load_main_model(main_root, active_version)
    shapes = {k: tuple(v.shape) for k, v in personal_tensors(model).items()}
    out, ready = TrainedLearners(), []
    for data in learners:
        try:
            ready.append(_prepare(main_root, learners_root, data, active_version, shapes))
        except LEARNER_ERRORS as exc:
            out.failures[data.learner_id] = exc
    if not ready:
        return out
    batches = [LearnerBatch(learner_key(p.data.learner_id), *samples_to_tensors(p.data.train)) for p in ready]
    heldouts = [samples_to_tensors(p.data.heldout) for p in ready]
    starts = [{k: torch.from_numpy(v) for k, v in p.start.items()} for p in ready]
    before = evaluate_many(model, heldouts, starts)
    trained, updates = train_personal_and_update(model, batches, starts, config)
    after = evaluate_many(model, heldouts, trained)
    # Writing a clone waits on the disk, not the CPU (creating a file, and freeing the blocks of
    # the one it replaces: milliseconds each on a disk mounted with online discard), so a few
    # writers overlap those waits; the tensors are encoded under the GIL either way.
    with ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="clone-writer") as pool:
        writes = []
        for i, prepared in enumerate(ready):
            heads = {k: v.numpy().astype(np.float32, copy=True) for k, v in trained[i].items()}
            delta = {k: v.numpy().astype(np.float32, copy=True) for k, v in updates[i].items()}
            metrics = (before[i], after[i])
            writes.append(pool.submit(_finish, prepared, heads, delta, metrics, config, started_at, sync=sync))
    for prepared, write in zip(ready, writes, strict=True):
        try:
            out.results.append(write.result())
        except OSError as exc:
            out.failures[prepared.data.learner_id] = exc
    return out


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
    """One learner: :func:`train_learners` of one, raising what went wrong."""
    batch = train_learners(
        main_root, learners_root, [LearnerData(learner_id, train, heldout)], active_version, config, num_threads
    )
    if learner_id in batch.failures:
        raise batch.failures[learner_id]
    return batch.results[0]


def _finish(
    prepared: _Prepared,
    heads: dict[str, np.ndarray],
    delta: dict[str, np.ndarray],
    metrics: tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]],
    config: LocalTrainingConfig,
    started_at: datetime,
    *,
    sync: bool,
) -> TrainingSessionResult:
    """Write the clone (heads, update and manifest in one file); the session's result."""
    directory, (before, after) = prepared.directory, metrics
    finished_at = datetime.now(UTC)
    result = TrainingSessionResult(
        learner_id=prepared.data.learner_id,
        source_version=prepared.manifest["source_version"],
        rebased_from=prepared.rebased_from,
        samples=len(prepared.data.train),
        epochs=config.epochs,
        loss_before=mean_loss(before),
        accuracy_before=before[PRIMARY_HEAD]["accuracy"],
        loss_after=mean_loss(after),
        accuracy_after=after[PRIMARY_HEAD]["accuracy"],
        delta_norm=delta_norm(delta),
        delta_path=directory / CLONE_NAME,
        started_at=started_at,  # the batch's start: the learners trained together
        finished_at=finished_at,
        seconds=(finished_at - started_at).total_seconds(),
    )
    manifest = {**prepared.manifest, "last_training": result.to_json()}
    save_trained_clone(directory, heads, delta, manifest, sync=sync)
    return result
