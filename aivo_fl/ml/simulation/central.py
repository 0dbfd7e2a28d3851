"""The strongest central model: the yardstick a federated main model is measured against.

The same architecture, started from the same round-0 main model, trained centrally and without
privacy on the pooled training interactions that the training learners produced up to a round
(never the evaluation cohort, never held-out interactions). How much of the network it trains
(the heads, the guide's depth, the full network) and for how many epochs is chosen on a
validation split of the TRAINING learners (whole learners held out), so the yardstick is as
strong as the data allow without ever looking at the learners it is scored on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from aivo_fl.ml.model import CurriculumNet, freeze_trunk, samples_to_tensors
from aivo_fl.ml.samples import Samples
from aivo_fl.ml.simulation.evaluation import accuracy
from aivo_fl.ml.simulation.population import Interactions, Population, concat_interactions
from aivo_fl.ml.training.main_model import make_optimizer, run_epochs

# Layers frozen from the bottom: only the heads' block, the activation guide's clone, everything.
CENTRAL_DEPTHS: dict[str, int] = {"heads": 11, "guide": 4, "full": 0}
VALIDATION_LEARNERS = 0.15  # of the training learners, held out whole to choose the settings


@dataclass(frozen=True)
class CentralSettings:
    depth: str = "full"
    epochs: int = 3
    # Large batches: the pooled year is ~1.2 million interactions; at 1,024 an epoch of the full
    # network costs ~2.4 s per 100,000 on one core (256: 6.4 s), and the data are plentiful.
    # A small pool (a quick run) trains at smaller batches: see train_central.
    learning_rate: float = 2e-3
    batch_size: int = 1_024
    weight_decay: float = 0.01


@dataclass(frozen=True)
class Choice:
    """The settings chosen on validation learners: the best of all, and the best per depth."""

    settings: CentralSettings
    per_depth: dict[str, CentralSettings]
    validation: dict[str, float]  # each depth's best validation accuracy (primary head)


def pooled_training(population: Population, rounds: int) -> Interactions:
    """Every training interaction of the training learners in weeks 1..rounds (no held-out rows,
    no evaluation learner: the population never gives them a training week)."""
    return concat_interactions([population.week(w).train() for w in range(1, rounds + 1)])


def _model_at(round0: CurriculumNet, depth: str) -> CurriculumNet:
    model = copy.deepcopy(round0)
    model.frozen_layers = CENTRAL_DEPTHS[depth]
    freeze_trunk(model)
    return model


def train_central(
    round0: CurriculumNet,
    pooled: Samples,
    settings: CentralSettings,
    validation: Samples | None = None,
    seed: int = 0,
) -> tuple[CurriculumNet, list[float]]:
    """``round0`` trained at ``settings`` on ``pooled``; with ``validation``, the epoch with the best
    validation accuracy is kept. Returns the model and each epoch's validation accuracy."""
    model = _model_at(round0, settings.depth)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, settings.learning_rate, settings.weight_decay)
    x, y = samples_to_tensors(pooled)
    # At most `batch_size`, and at least ~200 steps an epoch when the pool is small (quick runs).
    batch_size = max(1, min(settings.batch_size, len(pooled) // 200))
    scores: list[float] = []
    best: dict[str, torch.Tensor] | None = None

    def on_epoch(epoch: int, _loss: float) -> bool:
        nonlocal best
        if validation is not None:
            model.eval()
            scores.append(accuracy(model, validation))
            model.train()
            if scores[-1] >= max(scores):
                best = copy.deepcopy(model.state_dict())
        return False

    run_epochs(
        model,
        optimizer,
        x,
        y,
        epochs=settings.epochs,
        batch_size=batch_size,
        # Constant: epoch k of the choice is epoch k of the final fit.
        lr_at=lambda _epoch: settings.learning_rate,
        seed=seed,
        on_epoch=on_epoch,
    )
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    return model, scores


def validation_split(pooled: Interactions, seed: int) -> tuple[Samples, Samples]:
    """(fit, validation): whole training learners held out, so the choice generalizes to new learners."""
    learners = pooled.learners
    rng = np.random.default_rng([seed, 41])
    held = rng.choice(learners, max(1, round(len(learners) * VALIDATION_LEARNERS)), replace=False)
    is_validation = np.isin(pooled.learner, held)
    return pooled.samples.subset(np.flatnonzero(~is_validation)), pooled.samples.subset(np.flatnonzero(is_validation))


def choose_settings(round0: CurriculumNet, pooled: Interactions, max_epochs: int, seed: int = 0) -> Choice:
    """Per depth, the epoch count with the best validation accuracy (on held-out training
    learners); the strongest is the depth that does best."""
    fit, validation = validation_split(pooled, seed)
    per_depth: dict[str, CentralSettings] = {}
    found: dict[str, float] = {}
    for depth in CENTRAL_DEPTHS:
        _, scores = train_central(round0, fit, CentralSettings(depth=depth, epochs=max_epochs), validation, seed)
        found[depth] = max(scores)
        per_depth[depth] = CentralSettings(depth=depth, epochs=int(np.argmax(scores)) + 1)
    best = max(found, key=lambda d: found[d])
    return Choice(per_depth[best], per_depth, found)
