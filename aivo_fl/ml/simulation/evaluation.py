"""How good is the main model, measured the way the FL literature does: against a central oracle.

* cold start: the main model on the fixed evaluation cohort (learners who never trained), what a
  new learner gets;
* personalized: each learner's clone on its own held-out interactions, next to the main model on
  exactly the same interactions;
* curriculum: the main model on the curriculum validation split (the guard against forgetting);
* oracle: the same model with the same layers trained centrally, without privacy, on the pooled
  training data of the training learners: the best a round could reach;
* gap closed = (cold start - round 0) / (oracle - round 0).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from aivo_fl.ml.model import CurriculumNet, freeze_trunk, samples_to_tensors
from aivo_fl.ml.samples import HEAD_CLASSES, PRIMARY_HEAD, Samples
from aivo_fl.ml.simulation.population import Interactions
from aivo_fl.ml.training.local import LearnerBatch, LocalTrainingConfig, train_one


def correct(model: CurriculumNet, samples: Samples, head: str = PRIMARY_HEAD) -> np.ndarray:
    """(n,) bool: which of `samples` the model gets right on `head`."""
    if len(samples) == 0:
        return np.zeros(0, dtype=bool)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(torch.from_numpy(np.ascontiguousarray(samples.features, dtype=np.float32)))[head]
    finally:
        model.train(was_training)
    return logits.argmax(dim=1).numpy() == samples.targets[head]


def accuracy(model: CurriculumNet, samples: Samples, head: str = PRIMARY_HEAD) -> float:
    hits = correct(model, samples, head)
    return float(hits.mean()) if len(hits) else float("nan")


def correct_heads(model: CurriculumNet, samples: Samples) -> np.ndarray:
    """(n, heads) bool in HEAD_CLASSES order: which of ``samples`` the model gets right, per head
    (one forward pass for all heads)."""
    if len(samples) == 0:
        return np.zeros((0, len(HEAD_CLASSES)), dtype=bool)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(torch.from_numpy(np.ascontiguousarray(samples.features, dtype=np.float32)))
    finally:
        model.train(was_training)
    return np.stack([logits[h].argmax(dim=1).numpy() == samples.targets[h] for h in HEAD_CLASSES], axis=1)


def per_learner(hits: np.ndarray, rows: np.ndarray, learners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``hits`` (n, k) by learner: ((len(learners), k) correct, (len(learners),) totals), where
    ``rows`` names each row's learner and ``learners`` (sorted) fixes the order."""
    index = np.searchsorted(learners, rows)
    if len(rows) and not np.array_equal(learners[np.minimum(index, len(learners) - 1)], rows):
        raise ValueError("per_learner: a row's learner is not among `learners`")
    correct_sums = np.zeros((len(learners), hits.shape[1]))
    np.add.at(correct_sums, index, hits)
    return correct_sums, np.bincount(index, minlength=len(learners)).astype(np.float64)


def learner_counts(model: CurriculumNet, interactions: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """Per learner (in ``interactions.learners`` order), per head: correct predictions and interactions."""
    return per_learner(correct_heads(model, interactions.samples), interactions.learner, interactions.learners)


def cold_start_accuracy(main: CurriculumNet, evaluation_cohort: Interactions) -> float:
    """The main model on learners it never trained on."""
    return accuracy(main, evaluation_cohort.samples)


@dataclass(frozen=True)
class PersonalizedAccuracy:
    clones: float  # each learner's clone on its own held-out interactions, pooled
    main: float  # the main model on the same interactions
    learners: int
    samples: int


def personalized_accuracy(
    main: CurriculumNet, personal: Mapping[int, Mapping[str, torch.Tensor]], heldout: Interactions
) -> PersonalizedAccuracy:
    """Clones (main + each learner's personal tensors) vs the main model, on each learner's held-out data."""
    clone = copy.deepcopy(main)
    hits_clone = hits_main = total = 0
    for learner, samples in heldout.by_learner().items():
        if learner not in personal:
            continue
        clone.load_state_dict(dict(personal[learner]), strict=False)
        hits_clone += int(correct(clone, samples).sum())
        hits_main += int(correct(main, samples).sum())
        total += len(samples)
    if total == 0:
        return PersonalizedAccuracy(float("nan"), float("nan"), 0, 0)
    learners = len(set(heldout.learners.tolist()) & set(personal))
    return PersonalizedAccuracy(hits_clone / total, hits_main / total, learners, total)


def clone_hits(
    main: CurriculumNet, personal: Mapping[int, Mapping[str, torch.Tensor]], heldout: Interactions
) -> tuple[Interactions, np.ndarray]:
    """The held-out rows of learners who have a clone, and (rows, heads) which of them each learner's
    own clone (main + its personal tensors) gets right."""
    index = np.flatnonzero(np.isin(heldout.learner, np.fromiter(personal, dtype=np.int64, count=len(personal))))
    rows = Interactions(heldout.samples.subset(index), heldout.learner[index], heldout.heldout[index])
    clone = copy.deepcopy(main)
    hits = []
    for learner, samples in rows.by_learner().items():
        clone.load_state_dict(dict(personal[learner]), strict=False)
        hits.append(correct_heads(clone, samples))
    return rows, np.concatenate(hits) if hits else np.zeros((0, len(HEAD_CLASSES)), dtype=bool)


def gap_closed(cold_start: float, round0: float, oracle: float) -> float:
    """Share of the way from the round-0 main model to the central oracle (1.0 = as good as the oracle)."""
    if oracle <= round0:
        return float("nan")  # nothing to close: the oracle is no better than where we started
    return (cold_start - round0) / (oracle - round0)


def train_oracle(
    main: CurriculumNet,
    pooled_train: Samples,
    config: LocalTrainingConfig | None = None,
) -> CurriculumNet:
    """The central oracle: `main` with the layers federated rounds move (its personal layers)
    trained on the pooled training data, without privacy and without a proximal term."""
    config = config or LocalTrainingConfig(epochs=10, batch_size=64, learning_rate=0.05, proximal_mu=0.0)
    oracle = copy.deepcopy(main)
    freeze_trunk(oracle)
    train_one(oracle, LearnerBatch(0, *samples_to_tensors(pooled_train)), {}, config)
    oracle.eval()
    return oracle
