"""One learner never costs another: each step of a training batch, isolated per learner.

A batch of learners is read in one query, trained in one batched call and recorded in one
transaction, because that is what makes a thousand learners cheap. When the batch's call fails,
it is tried again for smaller parts: reading and recording once per learner, training by halves
(a batched call per half, down to the one learner at fault). Only the learners whose own part
fails are reported; the others are read, trained and recorded as usual.

The database going away is not a learner's fault: once a per-learner retry finds it unreachable
the batch stops (DatabaseUnavailable, a transient failure the run retries).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy.exc as sa_exc

from aivo_fl.ml.samples import LearnerData
from aivo_fl.ml.training.clones import TrainedLearners, TrainingSessionResult, train_learners
from aivo_fl.ml.training.local import LocalTrainingConfig
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import (
    DatabaseUnavailable,
    LearnerInteractions,
    ModelRegistry,
    PersonalizedModelRecord,
    RegistryError,
    TrainingSessionInput,
)

T = TypeVar("T")
R = TypeVar("R")

# What a registry call can fail with because of one learner's values (a row a constraint refuses,
# a value the driver cannot convert); a retry per learner finds which.
REGISTRY_ERRORS = (RegistryError, DatabaseUnavailable, sa_exc.SQLAlchemyError, ValueError, TypeError)
# What a batched training call can fail with because of one learner's data (torch raises
# RuntimeError/IndexError for a bad index, ValueError for a bad shape). A damaged main model or a
# full disk raise ArtifactError/OSError: not any learner's fault, so never split for.
TRAINING_ERRORS = (RuntimeError, IndexError, ValueError, TypeError)


def each_or_batch(
    items: Sequence[T], call: Callable[[Sequence[T]], list[R]], key: Callable[[T], str], failures: dict[str, Exception]
) -> list[tuple[T, R]]:
    """``call(items)``; if it fails, ``call([item])`` for each item, failures by ``key(item)``.
    The database being unreachable on a single item stops it (raised): no learner is at fault."""
    if not items:
        return []
    try:
        return list(zip(items, call(items), strict=True))
    except REGISTRY_ERRORS:
        pass
    done = []
    for item in items:
        try:
            done.extend(zip([item], call([item]), strict=True))
        except DatabaseUnavailable:
            raise
        except REGISTRY_ERRORS as exc:
            failures[key(item)] = exc
    return done


def read_isolated(
    registry: ModelRegistry, learner_ids: Sequence[str], failures: dict[str, Exception]
) -> tuple[dict[str, PersonalizedModelRecord], dict[str, LearnerInteractions]]:
    """The learners' personalized models and interactions, a learner whose rows cannot be read at
    all (a timestamp the driver cannot parse, say) into `failures`."""

    def read(ids: Sequence[str]) -> list[tuple[PersonalizedModelRecord | None, LearnerInteractions | None]]:
        models, interactions = registry.get_personalized_models(ids), registry.get_interactions_of(ids)
        return [(models.get(i), interactions.get(i)) for i in ids]

    found = each_or_batch(learner_ids, read, str, failures)
    models = {i: model for i, (model, _) in found if model is not None}
    return models, {i: rows for i, (_, rows) in found if rows is not None}


def train_isolated(
    store: ModelStore,
    learners: Sequence[LearnerData],
    version: str,
    config: LocalTrainingConfig,
    num_threads: int | None,
) -> TrainedLearners:
    """:func:`train_learners` of these learners (files left for the caller's ``os.sync``); when the
    batched call fails, each half again, so only the learner at fault is reported."""
    try:
        return train_learners(store.main_root, store.learners_root, learners, version, config, num_threads, sync=False)
    except TRAINING_ERRORS as exc:
        if len(learners) == 1:
            return TrainedLearners(failures={learners[0].learner_id: exc})
    half = len(learners) // 2
    out = TrainedLearners()
    for part in (learners[:half], learners[half:]):
        done = train_isolated(store, part, version, config, num_threads)
        out.results.extend(done.results)
        out.failures.update(done.failures)
    return out


def record_isolated(
    registry: ModelRegistry, results: Sequence[TrainingSessionResult], failures: dict[str, Exception]
) -> list[tuple[int, TrainingSessionResult]]:
    """Record the sessions (one transaction, else one per learner): (session id, result) of those
    recorded. An unrecorded learner keeps its trained clone and has no session for it."""
    recorded = each_or_batch(
        results,
        lambda part: registry.record_training_sessions([session_input(r) for r in part]),
        lambda r: r.learner_id,
        failures,
    )
    return [(session_id, result) for result, session_id in recorded]


def register_isolated(
    registry: ModelRegistry, models: Mapping[str, dict[str, Any]], failures: dict[str, Exception]
) -> None:
    """Refresh these personalized models' metadata (one transaction, else one per learner)."""

    def register(ids: Sequence[str]) -> list[str]:
        registry.register_personalized_models({i: models[i] for i in ids})
        return list(ids)

    each_or_batch(list(models), register, str, failures)


def session_input(result: TrainingSessionResult) -> TrainingSessionInput:
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
