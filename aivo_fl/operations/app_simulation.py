"""Stands in for the AIVO app: learners who complete their baseline and then keep interacting."""

from __future__ import annotations

import numpy as np

from aivo_fl.ml.samples import Samples
from aivo_fl.ml.simulation.world import generate_learner, generate_learner_activity
from aivo_fl.registry import ModelRegistry
from aivo_fl.registry.schema import utcnow

INITIAL_INTERACTIONS = 200
WEEKLY_INTERACTIONS = 60


def _concat(a: Samples, b: Samples) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return (
        np.concatenate([a.features, b.features]),
        {h: np.concatenate([a.targets[h], b.targets[h]]) for h in a.targets},
    )


def simulate_new_learners(
    registry: ModelRegistry, count: int, *, seed: int = 0, interactions: int = INITIAL_INTERACTIONS
) -> list[str]:
    """Create `count` learners with a completed baseline and their first interactions."""
    start = registry.count_learners()
    learner_ids = [f"learner-{i:06d}" for i in range(start, start + count)]
    now = utcnow()
    for learner_id in learner_ids:
        data = generate_learner(learner_id, seed, interactions)
        features, targets = _concat(data.train, data.heldout)
        registry.add_learner(learner_id, baseline_completed_at=now)
        registry.add_interactions(learner_id, features, targets, created_at=now)
    return learner_ids


def simulate_activity(
    registry: ModelRegistry,
    learner_ids: list[str],
    week: int,
    *,
    seed: int = 0,
    interactions: int = WEEKLY_INTERACTIONS,
) -> int:
    """A week of new interactions for each learner, drawn from that learner's own preferences."""
    now = utcnow()
    total = 0
    for learner_id in learner_ids:
        samples = generate_learner_activity(learner_id, seed, week, interactions)
        total += registry.add_interactions(learner_id, samples.features, samples.targets, created_at=now)
    return total
