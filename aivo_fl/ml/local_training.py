"""On-device style fine-tuning of a learner's clone: heads only, delta written atomically."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aivo_fl.ml.aggregation.base import delta_norm
from aivo_fl.ml.artifacts import (
    encode_tensors,
    file_record,
    main_head_tensors,
    save_artifact,
    validate_version,
    write_file_atomic,
)
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
from aivo_fl.ml.training import configure_cpu, make_optimizer, run_epochs

DEFAULT_LOCAL_LEARNING_RATE = 1e-2


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


def train_learner(
    main_root: Path,
    learners_root: Path,
    learner_id: str,
    train: Samples,
    heldout: Samples,
    active_version: str,
    epochs: int = 5,
    batch_size: int = 32,
    learning_rate: float = DEFAULT_LOCAL_LEARNING_RATE,
    seed: int = 0,
    num_threads: int | None = None,
) -> TrainingSessionResult:
    """Fine-tune the learner's heads on `train`, report before/after on `heldout`.

    If the clone was made from an older main version it is rebased onto `active_version` first.
    """
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    if len(train) == 0:
        raise ValueError(f"learner {learner_id!r}: no training samples")
    validate_version(active_version)
    directory = learner_dir(learners_root, learner_id)
    manifest = read_learner_manifest(learners_root, learner_id)

    rebased_from: str | None = None
    if manifest["source_version"] != active_version:
        rebased_from = manifest["source_version"]
        rebase_clone(main_root, learners_root, learner_id, active_version)

    model, manifest = load_learner_model(main_root, learners_root, learner_id)
    before = evaluate(model, heldout)

    x, y = samples_to_tensors(train)
    configure_cpu(num_threads)
    # No weight decay: decaying towards zero would erase what the main model knows.
    optimizer = make_optimizer(model.heads.parameters(), learning_rate, 0.0)
    run_epochs(model, optimizer, x, y, epochs=epochs, batch_size=batch_size, lr_at=lambda _: learning_rate, seed=seed)
    model.eval()
    after = evaluate(model, heldout)

    heads = head_state(model)
    delta = subtract(heads, main_head_tensors(main_root, active_version))
    delta_bytes = encode_tensors(delta)
    delta_path = directory / DELTA_NAME
    write_file_atomic(delta_path, delta_bytes)

    finished_at = datetime.now(UTC)
    result = TrainingSessionResult(
        learner_id=learner_id,
        source_version=active_version,
        rebased_from=rebased_from,
        samples=len(train),
        epochs=epochs,
        loss_before=mean_loss(before),
        accuracy_before=before[PRIMARY_HEAD]["accuracy"],
        loss_after=mean_loss(after),
        accuracy_after=after[PRIMARY_HEAD]["accuracy"],
        delta_norm=delta_norm(delta),
        delta_path=delta_path,
        started_at=started_at,
        finished_at=finished_at,
        seconds=time.perf_counter() - started,
    )
    # Manifest is written last (inside save_artifact), so it only ever points at complete files.
    new_manifest = {
        **{k: v for k, v in manifest.items() if k != COPY_ON_WRITE},  # its own heads from now on
        "files": {DELTA_NAME: file_record(delta_bytes)},
        "last_training": result.to_json(),
    }
    save_artifact(directory, heads, new_manifest, HEADS_NAME)
    return result
