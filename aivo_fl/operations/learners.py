"""Per-learner work: provisioning clones, local training, removal."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from aivo_fl.config import DEFAULT_BASE_MODEL
from aivo_fl.ml.interactions import describe_skipped
from aivo_fl.ml.model import ArchitectureSummary
from aivo_fl.ml.samples import Samples
from aivo_fl.ml.store.artifacts import ArtifactError
from aivo_fl.ml.store.clone_file import NOT_SAFETENSORS
from aivo_fl.ml.store.cloning import CloneInfo, clone_for_learner, directory_size, read_learner_manifest, remove_learner
from aivo_fl.ml.store.learner_ids import InvalidLearnerId, validate_learner_id
from aivo_fl.ml.store.safe_files import BAD_MANIFEST, HASH_MISMATCH, MISSING, NOT_IN_MANIFEST, TRUNCATED
from aivo_fl.ml.training.clones import LearnerData, TrainingSessionResult
from aivo_fl.ml.training.finite import NON_FINITE_WEIGHTS
from aivo_fl.ml.training.local import DEFAULT_PROXIMAL_MU, LocalTrainingConfig
from aivo_fl.operations.errors import diagnose
from aivo_fl.operations.isolation import read_isolated, record_isolated, register_isolated, train_isolated
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import (
    LearnerInteractions,
    ModelRegistry,
    PersonalizedModelRecord,
    RegistryError,
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
    # Learners left for a later week: too few usable interactions (learner id -> why).
    not_trained: dict[str, str] = field(default_factory=dict)
    # The app's rows skipped while reading (learner id -> reason -> rows); reported only summed.
    skipped_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    # Clones rebuilt from the active main version before training (learner id -> why).
    rebuilt: dict[str, str] = field(default_factory=dict)


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

    One learner never costs another: a bad row of the app's is skipped (`skipped_rows`), a learner
    with too few usable rows waits (`not_trained`), and a learner that cannot be read, trained,
    written or recorded is reported in `failures` while the others go on (`operations.isolation`).
    A clone that is damaged or holds non-finite weights is rebuilt from the active main version
    (`rebuilt`) and trained. Per batch the files are flushed to disk at once before the registry
    rows that point at them are committed, as for clones.
    """
    active = registry.get_active_version()
    if active is None:
        raise MainModelMissing()
    config = LocalTrainingConfig(epochs=epochs, seed=seed, proximal_mu=proximal_mu)
    done = TrainedBatch()
    for start in range(0, len(learner_ids), TRAIN_BATCH):
        _train_batch(
            registry, store, learner_ids[start : start + TRAIN_BATCH], active.version, config, num_threads, done
        )
    return done


def _train_batch(
    registry: ModelRegistry,
    store: ModelStore,
    learner_ids: Sequence[str],
    version: str,
    config: LocalTrainingConfig,
    num_threads: int | None,
    done: TrainedBatch,
) -> None:
    ready, models = _training_data(registry, learner_ids, done)
    batch = train_isolated(store, ready, version, config, num_threads)
    rebuilt = rebuild_damaged(registry, store, batch.failures, version)
    if rebuilt:  # trained now from the active main version: the learner loses a week, not the clone
        again = train_isolated(store, [d for d in ready if d.learner_id in rebuilt], version, config, num_threads)
        batch.results.extend(again.results)
        batch.failures.update(again.failures)
        done.rebuilt.update(rebuilt)
    done.failures.update(batch.failures)
    os.sync()
    recorded = record_isolated(registry, batch.results, done.failures)
    # A rebased clone's row follows it to its new source version.
    rebased = {
        result.learner_id: {**models[result.learner_id].metadata, "sourceVersion": result.source_version}
        for _, result in recorded
        if result.rebased_from is not None
    }
    register_isolated(registry, rebased, done.failures)
    done.outcomes.update({r.learner_id: LearnerTrainingOutcome(i, r) for i, r in recorded})


def _training_data(
    registry: ModelRegistry, learner_ids: Sequence[str], done: TrainedBatch
) -> tuple[list[LearnerData], dict[str, PersonalizedModelRecord]]:
    """The learners of a batch that can train, with their train/held-out split, and their
    personalized models; the rest into `done.failures` or `done.not_trained`."""
    valid = []
    for learner_id in learner_ids:
        try:
            valid.append(validate_learner_id(learner_id))
        except InvalidLearnerId as exc:
            done.failures[learner_id] = exc
    cloned, interactions = read_isolated(registry, valid, done.failures)
    ready = []
    for learner_id in valid:
        if learner_id in done.failures:
            continue
        if learner_id not in interactions:
            done.failures[learner_id] = RegistryError(f"Unknown learner {learner_id}")
        elif learner_id not in cloned:
            done.failures[learner_id] = RegistryError(
                f"Learner {learner_id} has no personalized model yet; clone it first"
            )
        else:
            found = interactions[learner_id]
            if found.skipped:
                done.skipped_rows[learner_id] = found.skipped
            train, heldout = split_interactions(found)
            if len(train) < MIN_TRAINING_INTERACTIONS or len(heldout) < 1:
                done.not_trained[learner_id] = _too_few(learner_id, len(train) + len(heldout), found.skipped)
            else:
                ready.append(LearnerData(learner_id, train, heldout))
    return ready, cloned


def _too_few(learner_id: str, usable: int, skipped: dict[str, int]) -> str:
    unusable = f" ({sum(skipped.values())} more skipped: {describe_skipped(skipped)})" if skipped else ""
    return (
        f"Learner {learner_id} has {usable} usable interactions{unusable}; "
        f"local training needs at least {MIN_TRAINING_INTERACTIONS + 1}"
    )


# Why a clone is rebuilt from the active main version instead of failing every later training:
# its own files were left inconsistent or torn (a crash between writes, a lost flush) or its weights
# are not finite.
REPAIRABLE = {HASH_MISMATCH, TRUNCATED, MISSING, BAD_MANIFEST, NOT_IN_MANIFEST, NOT_SAFETENSORS}


def _damage(store: ModelStore, learner_id: str, exc: Exception) -> str | None:
    """Why this failure is a clone only a rebuild mends, or None. A file outside the clone's own
    folder (an old main version pruned, say) is not the clone's damage: rebuilding would only lose
    the learner's personalization."""
    reason = getattr(exc, "reason", None)
    if reason == NON_FINITE_WEIGHTS:
        return reason
    own = os.fspath(store.learner_dir(learner_id))
    path = getattr(exc, "path", "")
    inside = path == own or path.startswith(own + os.sep)
    return reason if reason in REPAIRABLE and inside else None


def rebuild_damaged(
    registry: ModelRegistry, store: ModelStore, failures: dict[str, Exception], version: str
) -> dict[str, str]:
    """Rebuild, from the active main version, each clone in `failures` that is damaged in a way
    only a rebuild mends; its row's metadata says so (`rebuilt`). Learner id -> why, of those rebuilt."""
    notes, reasons = {}, {}
    if not store.learners_root.is_dir():  # an unmounted store is not a damaged clone: nothing is rebuilt
        return {}
    for learner_id, exc in list(failures.items()):
        reason = _damage(store, learner_id, exc)
        if reason is None:
            continue
        try:
            remove_learner(store.learners_root, learner_id)
            clone = clone_for_learner(store.main_root, store.learners_root, learner_id, version)
        except (ArtifactError, OSError) as error:
            failures[learner_id] = error
            continue
        del failures[learner_id]
        reasons[learner_id] = f"clone rebuilt from main version {version}: {reason}"
        rebuilt = {"reason": reason, "at": datetime.now(UTC).isoformat(), "fromVersion": version}
        notes[learner_id] = {**personalized_model_metadata(clone), "rebuilt": rebuilt}
    if notes:
        os.sync()  # the new clones are durable before the rows say so
        register_isolated(registry, notes, failures)
    return {learner_id: why for learner_id, why in reasons.items() if learner_id not in failures}


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
    if learner_id in done.not_trained:
        raise RegistryError(done.not_trained[learner_id])
    return done.outcomes[learner_id]
