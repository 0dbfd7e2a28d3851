"""A simulated week of local training: every active learner of a population trains at once, in
memory, keeping its personalization between weeks (what the product does from files, for the
benchmarks' thousands of learners)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from aivo_fl.ml.model import CurriculumNet, samples_to_tensors
from aivo_fl.ml.simulation.population import Interactions
from aivo_fl.ml.training.batched import DEFAULT_GROUP_SIZE, train_personal_and_update
from aivo_fl.ml.training.local import LearnerBatch, LocalTrainingConfig, personal_tensors

Tensors = dict[str, Tensor]


@dataclass(frozen=True)
class WeekUpdates:
    """One week of local training: each active learner's update and its new personal offset."""

    learners: list[int]
    deltas: list[Tensors]  # what the learner sends: its step-normalized fit from main (train_personal_and_update)
    samples: list[int]
    offsets: dict[int, Tensors]  # trained - main: the personalisation the learner keeps


def train_active_learners(
    model: CurriculumNet,
    week_train: Interactions,
    offsets: dict[int, Tensors],
    config: LocalTrainingConfig,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> WeekUpdates:
    """Train every learner in `week_train` at once: its personal layers from main + its kept offset
    (the rebase), its update from main (:func:`train_personal_and_update`)."""
    main = personal_tensors(model)
    data = week_train.by_learner()
    learners = list(data)
    starts = [{k: main[k] + offsets[i][k] for k in main} if i in offsets else main for i in learners]
    batches = [LearnerBatch(i, *samples_to_tensors(data[i])) for i in learners]
    trained, updates = train_personal_and_update(model, batches, starts, config, group_size)
    return WeekUpdates(
        learners=learners,
        deltas=updates,
        samples=[len(data[i]) for i in learners],
        offsets={**offsets, **{i: {k: t[k] - main[k] for k in main} for i, t in zip(learners, trained, strict=True)}},
    )
