from __future__ import annotations

import numpy as np

from aivo_fl.ml.samples import HEAD_CLASSES, NUM_FEATURES, PRIMARY_HEAD, Samples, bayes_ceiling
from aivo_fl.ml.simulation.world import generate_cohort, generate_curriculum, generate_learner


def assert_samples_equal(a, b) -> None:
    np.testing.assert_array_equal(a.features, b.features)
    for head in HEAD_CLASSES:
        np.testing.assert_array_equal(a.targets[head], b.targets[head])
        np.testing.assert_array_equal(a.bayes_labels[head], b.bayes_labels[head])


def test_curriculum_shapes_and_dtypes() -> None:
    s = generate_curriculum(500, seed=1)
    assert len(s) == 500
    assert s.features.shape == (500, NUM_FEATURES) and s.features.dtype == np.float32
    for head, k in HEAD_CLASSES.items():
        for arr in (s.targets[head], s.bayes_labels[head]):
            assert arr.shape == (500,) and arr.dtype == np.int64
            assert arr.min() >= 0 and arr.max() < k
        assert len(np.unique(s.bayes_labels[head])) == k  # every class actually occurs


def test_curriculum_is_reproducible_from_seed() -> None:
    assert_samples_equal(generate_curriculum(300, seed=7), generate_curriculum(300, seed=7))
    assert not np.array_equal(generate_curriculum(300, seed=7).features, generate_curriculum(300, seed=8).features)


def test_bayes_ceiling_is_accuracy_of_bayes_labels_and_labels_are_noisy() -> None:
    # Hand-made labels with a known agreement rate per head (an independent reference, not the formula).
    n = 8
    targets = {h: np.zeros(n, np.int64) for h in HEAD_CLASSES}
    bayes = {h: np.zeros(n, np.int64) for h in HEAD_CLASSES}
    for i, head in enumerate(HEAD_CLASSES):
        bayes[head][: i + 1] = 1  # the first i + 1 samples disagree
    hand = Samples(np.zeros((n, NUM_FEATURES), np.float32), targets, bayes)
    assert bayes_ceiling(hand) == {h: (n - i - 1) / n for i, h in enumerate(HEAD_CLASSES)}
    assert bayes_ceiling(hand.subset(np.arange(n - 1, n)))[PRIMARY_HEAD] == 1.0
    assert all(np.isnan(v) for v in bayes_ceiling(hand.subset(np.arange(0))).values())
    ceiling = bayes_ceiling(generate_curriculum(4000, seed=0))
    for head in HEAD_CLASSES:
        assert 0.5 < ceiling[head] < 0.95  # noisy, yet clearly learnable


def test_subset_selects_rows() -> None:
    s = generate_curriculum(50, seed=0)
    idx = np.array([3, 1, 4])
    sub = s.subset(idx)
    np.testing.assert_array_equal(sub.features, s.features[idx])
    np.testing.assert_array_equal(sub.targets["modality"], s.targets["modality"][idx])


def test_learner_is_deterministic_from_id_and_seed() -> None:
    a = generate_learner("learner-0003", seed=2)
    b = generate_learner("learner-0003", seed=2)
    assert_samples_equal(a.train, b.train)
    assert_samples_equal(a.heldout, b.heldout)
    other = generate_learner("learner-0004", seed=2)
    assert not np.array_equal(a.train.features, other.train.features)
    assert not np.array_equal(a.train.features, generate_learner("learner-0003", seed=3).train.features)


def test_learner_split_sizes() -> None:
    data = generate_learner("x", n_interactions=200, heldout_fraction=0.25)
    assert (len(data.train), len(data.heldout)) == (150, 50)


def test_cohort_ids_and_shift_from_curriculum() -> None:
    cohort = generate_cohort(6, seed=0, n_interactions=200)
    assert [ld.learner_id for ld in cohort] == [f"learner-{i:04d}" for i in range(6)]
    curriculum = generate_curriculum(3000)
    # Learners differ from each other and from the curriculum in what the teacher recommends.
    dists = [np.bincount(ld.train.bayes_labels[PRIMARY_HEAD], minlength=5) / len(ld.train) for ld in cohort]
    base = np.bincount(curriculum.bayes_labels[PRIMARY_HEAD], minlength=5) / len(curriculum)
    assert np.mean([np.abs(d - base).sum() for d in dists]) > 0.3
    assert np.abs(dists[0] - dists[1]).sum() > 0.1
