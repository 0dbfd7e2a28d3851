"""Poisson learner sampling: the draw has the stated rate, and the fixed denominator makes the
release independent of who showed up."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from aivo_fl.ml.aggregation.strategies import DpClipped, FedAvg
from aivo_fl.ml.privacy.sampling import expected_cohort, poisson_sample
from tests.ml.memory_source import Info, MemorySource

ALPHA = 1e-3


def test_sampling_frequency_is_binomial() -> None:
    population = [f"learner-{i}" for i in range(2_000)]
    rate, rounds = 0.15, 60
    rng = np.random.default_rng(7)
    draws = [poisson_sample(population, rate, rng) for _ in range(rounds)]
    total = sum(len(d) for d in draws)
    trials = rounds * len(population)
    assert stats.binomtest(total, trials, rate).pvalue > ALPHA
    assert stats.binomtest(total, trials, rate * 1.05).pvalue < ALPHA  # the test has power
    # every learner independently: per-learner counts are Binomial(rounds, rate)
    counts = np.zeros(len(population))
    index = {learner: i for i, learner in enumerate(population)}
    for d in draws:
        counts[[index[learner] for learner in d]] += 1
    binomial = stats.binom(rounds, rate)
    observed = np.bincount(counts.astype(int), minlength=rounds + 1)
    expected = binomial.pmf(np.arange(rounds + 1)) * len(population)
    keep = expected >= 5  # chi-square validity; pool the tails
    f_obs = np.append(observed[keep], observed[~keep].sum())
    f_exp = np.append(expected[keep], len(population) - expected[keep].sum())
    assert stats.chisquare(f_obs, f_exp).pvalue > ALPHA
    # and no learner is drawn twice in one round
    assert all(len(set(d)) == len(d) for d in draws)


def test_rate_one_takes_everybody_and_bad_rates_are_refused() -> None:
    population = list(range(50))
    assert poisson_sample(population, 1.0, np.random.default_rng(0)) == population
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="sample rate"):
            poisson_sample(population, bad, np.random.default_rng(0))


def test_expected_cohort_is_rate_times_population() -> None:
    assert expected_cohort(0.1, 10_000) == pytest.approx(1_000.0)
    assert expected_cohort(0.1, 3) == 1.0  # never below one learner
    with pytest.raises(ValueError):
        expected_cohort(0.1, -1)


SHAPES = {"w": (3,)}


def _releases(include_target: bool, fixed_denominator: bool, seeds: range) -> np.ndarray:
    """Many releases of a 40-learner population sampled at q=0.5; the target's delta is zero."""
    population = 40
    rate, clip, z = 0.5, 1.0, 0.5
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        others = poisson_sample(list(range(population - 1)), rate, rng)
        deltas = [{"w": np.array([0.8, 0.0, 0.0])} for _ in others]
        if include_target:
            deltas.append({"w": np.zeros(3)})
        realized = max(len(deltas), 1)
        denominator = expected_cohort(rate, population) if fixed_denominator else realized
        dp = DpClipped(FedAvg(), clip, z, denominator, sample_cap=1, rng=rng)  # every weight 1
        out.append(dp.aggregate(MemorySource(deltas, SHAPES, [Info(1)] * len(deltas)))["w"][0])
    return np.array(out)


def test_release_distribution_does_not_depend_on_who_showed_up() -> None:
    # Independent seeds for the two worlds: the comparison is between distributions, not draws.
    seeds, other_seeds = range(1_500), range(10_000, 11_500)
    without = _releases(False, True, seeds)
    with_target = _releases(True, True, other_seeds)
    # Fixed denominator: a learner with a zero delta changes nothing, whatever the count.
    assert stats.ks_2samp(without, with_target).pvalue > ALPHA
    assert stats.ttest_ind(without, with_target, equal_var=False).pvalue > ALPHA
    # Dividing by the realized count instead, the same test sees the learner: the test can fail.
    naive_without = _releases(False, False, seeds)
    naive_with = _releases(True, False, other_seeds)
    assert stats.ttest_ind(naive_without, naive_with, equal_var=False).pvalue < ALPHA
