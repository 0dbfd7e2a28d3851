"""DP-FedAvg: clipping bounds influence, noise has the stated std, epsilon matches dp-accounting."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from scipy import stats

from aivo_fl.ml.aggregation.strategies import DpClipped, FedAvg, Median, Weighted
from aivo_fl.ml.privacy.mechanism import (
    PLD_DISCRETIZATION,
    PrivacyEvent,
    clip_delta,
    dp_weight,
    epsilon_for_events,
    epsilon_warning,
    noise_std,
)
from tests.ml.memory_source import Info, MemorySource

SHAPES = {"heads.a.weight": (4, 6), "heads.a.bias": (4,)}


def _delta(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {k: scale * rng.standard_normal(s) for k, s in SHAPES.items()}


def _norm(d: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(v**2)) for v in d.values()))


def test_clip_uses_whole_delta_norm() -> None:
    d = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}  # norm 5 across tensors, < 5 per tensor
    clipped, norm, was_clipped = clip_delta(d, 1.0)
    assert norm == pytest.approx(5.0) and was_clipped
    assert _norm(clipped) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0])
    small, norm, was_clipped = clip_delta(d, 10.0)
    assert not was_clipped and _norm(small) == pytest.approx(5.0)


def test_dp_weight_is_capped_at_one() -> None:
    assert dp_weight(75, sample_cap=150) == pytest.approx(0.5)
    assert dp_weight(10**9, sample_cap=150) == 1.0
    assert dp_weight(10**9, sample_cap=150, factor=0.5) == 0.5
    with pytest.raises(ValueError):
        dp_weight(10, factor=2.0)


def _release(deltas: list[dict[str, np.ndarray]], samples: list[int], seed: int, d: float) -> dict:
    dp = DpClipped(FedAvg(), clip_norm=0.5, noise_multiplier=1.0, denominator=d, rng=np.random.default_rng(seed))
    return dp.aggregate(MemorySource(deltas, SHAPES, [Info(n) for n in samples]))


def test_one_learner_moves_the_release_by_at_most_clip_over_denominator() -> None:
    rng = np.random.default_rng(0)
    cohort = [_delta(rng, 0.05) for _ in range(6)]
    samples = [120, 150, 90, 300, 150, 60]
    outsider = _delta(rng, 1e4)  # enormous update ...
    denominator = 6.0
    for seed in range(5):
        without = _release(cohort, samples, seed, denominator)
        with_outsider = _release([*cohort, outsider], [*samples, 10**9], seed, denominator)  # ... and count
        moved = _norm({k: with_outsider[k] - without[k] for k in SHAPES})
        assert moved <= 0.5 / denominator + 1e-9
        assert moved > 0.9 * 0.5 / denominator  # the bound is attained: the test can fail


def test_noise_std_is_noise_multiplier_times_clip_norm() -> None:
    shapes = {"w": (200, 100)}
    nm, clip, d = 1.3, 0.7, 4.0
    rng = np.random.default_rng(1)
    deltas = [{"w": rng.standard_normal(shapes["w"])} for _ in range(3)]
    exact = sum(clip_delta(delta, clip)[0]["w"] for delta in deltas)
    dp = DpClipped(FedAvg(), clip, nm, d, sample_cap=1, rng=np.random.default_rng(2))
    noise = (dp.aggregate(MemorySource(deltas, shapes))["w"] * d - exact).ravel()
    std = noise_std(nm, clip)
    assert dp.released_noise_std == pytest.approx(std / d)
    assert stats.kstest(noise, "norm", args=(0.0, std)).pvalue > 1e-3
    # chi-square test of the variance: (n-1) s^2 / sigma^2 ~ chi2(n-1)
    n = noise.size
    statistic = (n - 1) * noise.var(ddof=1) / std**2
    assert stats.chi2.sf(statistic, n - 1) > 1e-3 and stats.chi2.cdf(statistic, n - 1) > 1e-3
    # the same tests reject a 5% wrong std, so they have power
    assert stats.kstest(noise, "norm", args=(0.0, 1.05 * std)).pvalue < 1e-3


def test_without_rng_nothing_is_released_the_clipped_average_comes_back() -> None:
    rng = np.random.default_rng(4)
    deltas = [_delta(rng, s) for s in (0.01, 3.0, 0.2)]
    dp = DpClipped(FedAvg(), clip_norm=0.5, noise_multiplier=1.0, denominator=5.0, sample_cap=100)
    got = dp.aggregate(MemorySource(deltas, SHAPES, [Info(50), Info(400), Info(100)]))
    weights = [0.5, 1.0, 1.0]  # min(n / cap, 1)
    for name in SHAPES:
        want = sum(w * clip_delta(d, 0.5)[0][name] for w, d in zip(weights, deltas, strict=True)) / 5.0
        np.testing.assert_allclose(got[name], want, rtol=1e-12)
    assert dp.weights([Info(50), Info(400)]) == pytest.approx([0.1, 0.2])


def test_dp_weights_stay_capped_whatever_the_inner_strategy() -> None:
    dp = DpClipped(Weighted(), clip_norm=1.0, noise_multiplier=1.0, denominator=1.0, sample_cap=150)
    # 10 points of local gain earn the full weight; more cannot exceed 1; staleness multiplies
    assert dp.weights([Info(10**9, 5.0), Info(150, 0.05), Info(150, 0.10, factor=0.5)]) == pytest.approx(
        [1.0, 0.5, 0.5]
    )


def test_dp_refuses_robust_strategies_and_bad_knobs() -> None:
    with pytest.raises(ValueError, match="cannot be combined with differential privacy"):
        DpClipped(Median(), clip_norm=1.0, noise_multiplier=1.0, denominator=3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be > 0"):
        DpClipped(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, denominator=0.0)


def _library_epsilon(events: list[dp_accounting.DpEvent], delta: float) -> float:
    """dp-accounting's PLD accountant called directly (the product composes unsampled Gaussians in
    closed form first, so those agree to the PLD's discretization, not bit for bit)."""
    accountant = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(delta)


def _round_epsilon(noise_multiplier: float, delta: float = 1e-5) -> float:
    return epsilon_for_events([PrivacyEvent(noise_multiplier)], delta)


def test_epsilon_matches_the_accountant_called_directly() -> None:
    one = _library_epsilon([dp_accounting.GaussianDpEvent(1.1)], 1e-5)
    assert _round_epsilon(1.1, 1e-5) == pytest.approx(one, rel=1e-3)
    events = [PrivacyEvent(1.1), PrivacyEvent(0.8), PrivacyEvent(1.1), PrivacyEvent(2.0)]
    direct = _library_epsilon([dp_accounting.GaussianDpEvent(e.noise_multiplier) for e in events], 1e-6)
    assert epsilon_for_events(events, 1e-6) == pytest.approx(direct, rel=1e-3)
    assert epsilon_for_events(events, 1e-6) > epsilon_for_events(events[:2], 1e-6) > one * 0.9


def test_poisson_event_only_for_recorded_sampling() -> None:
    sampled = PrivacyEvent(1.0, sampling_rate=0.1)
    direct = _library_epsilon([dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0))] * 10, 1e-5)
    assert epsilon_for_events([sampled] * 10) == pytest.approx(direct, rel=1e-9)
    assert epsilon_for_events([sampled] * 10) < epsilon_for_events([PrivacyEvent(1.0)] * 10)


def test_noise_multiplier_point_one_gets_a_plain_warning() -> None:
    eps = _round_epsilon(0.1)
    assert eps > 10
    warning = epsilon_warning(eps)
    assert warning is not None and "far too large to give meaningful privacy" in warning
    assert warning.startswith(f"epsilon {eps:.3g}")
    assert epsilon_warning(_round_epsilon(5.0)) is None
    assert "infinite" in (epsilon_warning(_round_epsilon(0.0)) or "")
