"""Server-side anchoring to the curriculum: the server holds the curriculum it trained the main
model on, so after a round it can pull the candidate back toward it, privately for free.

Averaging many learners' small local fits moves the personal layers along directions that also
cost curriculum accuracy where the population does not need them to (each learner overfits its
few interactions). A short proximal fine-tune of the candidate on the curriculum (the same loss
and SGD as local training, anchored at the candidate) undoes what the population did not ask
for and keeps what it did: over rounds the main model settles near the joint optimum of both
losses instead of drifting along the population's alone. It reads no learner data, so under DP
it is post-processing and spends no privacy budget.
"""

from __future__ import annotations

import copy

import numpy as np

from aivo_fl.ml.model import CurriculumNet, freeze_trunk, samples_to_tensors
from aivo_fl.ml.round.options import AnchorOptions
from aivo_fl.ml.samples import Samples
from aivo_fl.ml.training.local import LearnerBatch, LocalTrainingConfig, personal_tensors, train_one


def anchor_to_curriculum(candidate: CurriculumNet, curriculum: Samples, config: LocalTrainingConfig) -> CurriculumNet:
    """A copy of ``candidate`` whose personal layers took ``config.epochs`` proximal SGD epochs on
    ``curriculum`` (proximal term toward ``candidate`` itself); the trunk's frozen layers stay."""
    if len(curriculum) == 0:
        raise ValueError("anchoring needs curriculum samples")
    model = copy.deepcopy(candidate)
    freeze_trunk(model)
    train_one(model, LearnerBatch(0, *samples_to_tensors(curriculum)), personal_tensors(candidate), config)
    model.eval()
    return model


def drawn_curriculum(curriculum: Samples, samples: int, seed: int) -> Samples:
    """The round's ``samples`` curriculum samples (all of them if fewer), drawn by ``seed`` alone."""
    drawn = np.random.default_rng([seed, 5]).permutation(len(curriculum))[:samples]
    return curriculum.subset(np.sort(drawn))


def anchor_round(candidate: CurriculumNet, curriculum: Samples, options: AnchorOptions, seed: int) -> CurriculumNet:
    """``candidate`` anchored as a round does it: ``options.samples`` drawn from the curriculum's
    training split (never the split the gate judges on), plain SGD, shuffled by ``seed``."""
    config = LocalTrainingConfig(options.epochs, options.batch_size, options.learning_rate, 0.0, seed)
    return anchor_to_curriculum(candidate, drawn_curriculum(curriculum, options.samples, seed), config)
