"""Per-learner work: provisioning clones, local training, removal."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aivo_fl.config import DEFAULT_BASE_MODEL
from aivo_fl.ml.model import ArchitectureSummary
from aivo_fl.ml.samples import Samples
from aivo_fl.ml.store.artifacts import ArtifactError
from aivo_fl.ml.store.cloning import CloneInfo, clone_for_learner, directory_size, read_learner_manifest, remove_learner
from aivo_fl.ml.store.learner_ids import InvalidLearnerId, validate_learner_id
from aivo_fl.ml.training.clones import LearnerData, TrainingSessionResult, train_learners
from aivo_fl.ml.training.local import DEFAULT_PROXIMAL_MU, LocalTrainingConfig
from aivo_fl.operations.errors import diagnose
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import (
    LearnerInteractions,
    ModelRegistry,
    PersonalizedModelRecord,
    RegistryError,
    TrainingSessionInput,
)

# Every 4th interaction is held out for evaluation. Positional, so an interaction never moves
# from held-out to training as the learner's history grows.
HELDOUT_EVERY = 4
MIN_TRAINING_INTERACTIONS = 8


class MainModelMissing(RegistryError):
    """No active main version: the main model has to be trained first."""

    def __init__(self) -> None:
        super().__init__("Main model not found: train it first with `aivo-fl train-main-model`")


def split_interactions(interactions: LearnerInteractions) -> tuple[Samples, Samples]:
    n = interactions.features.shape[0]
    heldout = np.arange(n) % HELDOUT_EVERY == HELDOUT_EVERY - 1
    # Real learners have no known Bayes labels: those exist only for the synthetic curriculum.
    whole = Samples(features=interactions.features, targets=interactions.targets, bayes_labels={})
    return whole.subset(np.flatnonzero(~heldout)), whole.subset(np.flatnonzero(heldout))


def personalized_model_metadata(clone: CloneInfo) -> dict[str, Any]:
    """The `"PersonalizedModel".metadata` the activation guide shows."""
    arch = clone.architecture
    return {
        "federatedLearning": True,
        "clonedModelPath": str(clone.path),
        "sourceVersion": clone.source_version,
        "architecture": {
            "totalLayers": arch.total_layers,
            "frozenLayers": arch.frozen_layers,
            "trainableLayers": arch.trainable_layers,
            "totalParameters": arch.total_params,
            "frozenParameters": arch.frozen_params,
            "trainableParameters": arch.trainable_params,
        },
        "bytesOnDisk": clone.bytes_on_disk,
    }


# Clones made durable (one flush) and registered (one transaction) together.
CLONE_BATCH = 1_000


@dataclass
class ClonedBatch:
    clones: list[CloneInfo] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # learner id -> reason


def clone_learners(
    registry: ModelRegistry, store: ModelStore, learner_ids: Sequence[str], *, base_model: str = DEFAULT_BASE_MODEL
) -> ClonedBatch:
    """Clone the active main version for each learner and register their personalized models.

    Per CLONE_BATCH learners: the copy-on-write clones are written, flushed to disk at once, then
    registered in one transaction, so a row never points at a clone a crash could lose. A learner
    that cannot be cloned (a bad id, a damaged store) is reported and the others go on.
    """
    active = registry.get_active_version()
    if active is None:
        raise MainModelMissing()
    done = ClonedBatch()
    for start in range(0, len(learner_ids), CLONE_BATCH):
        batch = []
        for learner_id in learner_ids[start : start + CLONE_BATCH]:
            try:
                batch.append(_clone_files(store, learner_id, active.version))
            except (InvalidLearnerId, ArtifactError, OSError) as exc:
                done.failures[learner_id] = diagnose(exc).line
        os.sync()  # one flush for the batch; per-file fsyncs cost ~6 ms each on a busy disk
        metadata = {clone.learner_id: personalized_model_metadata(clone) for clone in batch}
        registry.register_personalized_models(metadata, base_model=base_model)
        done.clones.extend(batch)
    return done


def _clone_files(store: ModelStore, learner_id: str, version: str) -> CloneInfo:
    validate_learner_id(learner_id)
    try:
        return clone_for_learner(store.main_root, store.learners_root, learner_id, version)
    except FileExistsError:
        pass
    # A retried run after the files were written but before the row was: keep an intact clone,
    # replace a damaged one.
    try:
        manifest = read_learner_manifest(store.learners_root, learner_id)
        return CloneInfo(
            learner_id=learner_id,
            source_version=manifest["source_version"],
            path=store.learner_dir(learner_id),
            architecture=ArchitectureSummary(**manifest["architecture"]),
            bytes_on_disk=directory_size(store.learner_dir(learner_id)),
        )
    except (ArtifactError, KeyError, TypeError):
        remove_learner(store.learners_root, learner_id)
        return clone_for_learner(store.main_root, store.learners_root, learner_id, version)


@dataclass(frozen=True)
class LearnerTrainingOutcome:
    session_id: int
    result: TrainingSessionResult


# Learners trained together: their interactions read in one query, their files made durable by one
# flush, their sessions recorded in one transaction. Bounds memory (a batch's interactions and
# personal layers) whatever the size of the run.
TRAIN_BATCH = 1_000


@dataclass
class TrainedBatch:
    outcomes: dict[str, LearnerTrainingOutcome] = field(default_factory=dict)
    failures: dict[str, Exception] = field(default_factory=dict)  # learner id -> what went wrong


def train_learners_locally(
    registry: ModelRegistry,
    store: ModelStore,
    learner_ids: Sequence[str],
    *,
    epochs: int,
    seed: int = 0,
    proximal_mu: float = DEFAULT_PROXIMAL_MU,
    num_threads: int | None = None,
) -> TrainedBatch:
    """Fine-tune these learners' personal layers on their own interactions, TRAIN_BATCH at a time
    (batched tensor operations), and record one session each.

    A learner that cannot train (a bad id, no clone, too few interactions, a damaged file) is
    reported in `failures` and the others go on. Per batch the files are flushed to disk at once
    before the registry rows that point at them are committed, as for clones.
    """
    active = registry.get_active_version()
    if active is None:
        raise MainModelMissing()
    config = LocalTrainingConfig(epochs=epochs, seed=seed, proximal_mu=proximal_mu)
    done = TrainedBatch()
    for start in range(0, len(learner_ids), TRAIN_BATCH):
        ready, models = _training_data(registry, learner_ids[start : start + TRAIN_BATCH], done.failures)
        batch = train_learners(
            store.main_root, store.learners_root, ready, active.version, config, num_threads, sync=False
        )
        done.failures.update(batch.failures)
        os.sync()
        session_ids = registry.record_training_sessions([_session_input(r) for r in batch.results])
        # A rebased clone's row follows it to its new source version.
        rebased = {
            r.learner_id: {**models[r.learner_id].metadata, "sourceVersion": r.source_version}
            for r in batch.results
            if r.rebased_from is not None
        }
        if rebased:
            registry.register_personalized_models(rebased)
        done.outcomes.update(
            {r.learner_id: LearnerTrainingOutcome(i, r) for i, r in zip(session_ids, batch.results, strict=True)}
        )
    return done


def _training_data(
    registry: ModelRegistry, learner_ids: Sequence[str], failures: dict[str, Exception]
) -> tuple[list[LearnerData], dict[str, PersonalizedModelRecord]]:
    """The learners of a batch that can train, with their train/held-out split, and their
    personalized models; the rest into `failures`."""
    valid = []
    for learner_id in learner_ids:
        try:
            valid.append(validate_learner_id(learner_id))
        except InvalidLearnerId as exc:
            failures[learner_id] = exc
    cloned, interactions = registry.get_personalized_models(valid), registry.get_interactions_of(valid)
    ready = []
    for learner_id in valid:
        if learner_id not in interactions:
            failures[learner_id] = RegistryError(f"Unknown learner {learner_id}")
        elif learner_id not in cloned:
            failures[learner_id] = RegistryError(f"Learner {learner_id} has no personalized model yet; clone it first")
        else:
            train, heldout = split_interactions(interactions[learner_id])
            if len(train) < MIN_TRAINING_INTERACTIONS or len(heldout) < 1:
                failures[learner_id] = RegistryError(
                    f"Learner {learner_id} has {len(train) + len(heldout)} interactions; "
                    f"local training needs at least {MIN_TRAINING_INTERACTIONS + 1}"
                )
            else:
                ready.append(LearnerData(learner_id, train, heldout))
    return ready, cloned


def _session_input(result: TrainingSessionResult) -> TrainingSessionInput:
    return TrainingSessionInput(
        learner_id=result.learner_id,
        source_version=result.source_version,
        rebased_from=result.rebased_from,
        samples=result.samples,
        epochs=result.epochs,
        loss_before=result.loss_before,
        accuracy_before=result.accuracy_before,
        loss_after=result.loss_after,
        accuracy_after=result.accuracy_after,
        delta_norm=result.delta_norm,
        delta_path=str(result.delta_path),
        started_at=result.started_at,
        completed_at=result.finished_at,
    )


def train_learner_locally(
    registry: ModelRegistry,
    store: ModelStore,
    learner_id: str,
    *,
    epochs: int,
    seed: int = 0,
    proximal_mu: float = DEFAULT_PROXIMAL_MU,
    num_threads: int | None = None,
) -> LearnerTrainingOutcome:
    """One learner: :func:`train_learners_locally` of one, raising what went wrong."""
    done = train_learners_locally(
        registry, store, [learner_id], epochs=epochs, seed=seed, proximal_mu=proximal_mu, num_threads=num_threads
    )
    if learner_id in done.failures:
        raise done.failures[learner_id]
    return done.outcomes[learner_id]
