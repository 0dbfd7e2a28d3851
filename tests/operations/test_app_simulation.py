"""The stand-in for the AIVO app: learners with a baseline, their interactions, weekly activity."""

from __future__ import annotations

import numpy as np

from aivo_fl.operations.app_simulation import simulate_activity, simulate_new_learners
from aivo_fl.registry import ModelRegistry


def test_new_learners_get_unique_ids_a_baseline_and_their_interactions(registry: ModelRegistry) -> None:
    first = simulate_new_learners(registry, 3, interactions=30)
    second = simulate_new_learners(registry, 2, interactions=30)

    assert len(set(first + second)) == 5  # a second batch never reuses an id
    assert registry.count_learners() == 5
    needing = registry.learners_needing_model(after=None, limit=100)
    assert sorted(needing) == sorted(first + second)  # baseline completed, no model yet
    for learner_id in first + second:
        assert registry.get_interactions(learner_id).features.shape == (30, 256)


def test_each_learner_has_their_own_interactions(registry: ModelRegistry) -> None:
    a, b = simulate_new_learners(registry, 2, seed=5, interactions=30)
    fa, fb = (registry.get_interactions(x).features for x in (a, b))
    assert not np.array_equal(fa, fb)


def test_weekly_activity_adds_new_interactions_for_each_learner(registry: ModelRegistry) -> None:
    learners = simulate_new_learners(registry, 2, interactions=20)
    before = registry.get_interactions(learners[0]).features

    added = simulate_activity(registry, learners, week=1, interactions=15)
    assert added == 30
    after = registry.get_interactions(learners[0]).features
    assert after.shape[0] == 35
    np.testing.assert_array_equal(after[:20], before)  # history kept, new rows appended
    simulate_activity(registry, learners, week=2, interactions=15)
    week2 = registry.get_interactions(learners[0]).features[35:]
    assert not np.array_equal(week2, after[20:])  # each week is a fresh draw
    ready = {learner for learner, _, _ in registry.learners_with_new_interactions(1)}
    assert ready == set()  # no personalized model yet: nobody to retrain
