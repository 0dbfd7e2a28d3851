"""Adaptive clipping (Andrew et al. 2021): the clip norm tracks the target quantile of the norms."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from aivo_fl.ml.privacy.adaptive_clipping import (
    combined_noise_multiplier,
    count_noise_std,
    next_clip_norm,
    noised_fraction_below,
    quantile_noise_multiplier,
)


def _track(target: float, rounds: int, seed: int) -> tuple[float, np.ndarray]:
    """Rounds of 400 learners whose update norms are log-normal around 2.0; start far off at 0.05."""
    rng = np.random.default_rng(seed)
    clip, cohort = 0.05, 400.0
    for _ in range(rounds):
        norms = rng.lognormal(mean=math.log(2.0), sigma=0.6, size=int(cohort))
        clip = next_clip_norm(clip, noised_fraction_below(norms, clip, cohort, rng), target)
    return clip, rng.lognormal(mean=math.log(2.0), sigma=0.6, size=200_000)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_clip_norm_converges_to_the_target_quantile(target: float) -> None:
    clip, fresh = _track(target, rounds=120, seed=int(target * 10))
    achieved = float(np.mean(fresh <= clip))
    assert abs(achieved - target) < 0.06, (clip, achieved)
    assert clip == pytest.approx(float(np.quantile(fresh, target)), rel=0.15)


def test_a_clip_too_high_comes_down_and_too_low_goes_up() -> None:
    assert next_clip_norm(1.0, fraction_below=0.9, target_quantile=0.5) < 1.0
    assert next_clip_norm(1.0, fraction_below=0.1, target_quantile=0.5) > 1.0
    assert next_clip_norm(1.0, fraction_below=0.5, target_quantile=0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        next_clip_norm(1.0, 0.5, target_quantile=1.0)


def test_count_noise_is_the_papers_and_is_really_added() -> None:
    assert count_noise_std(1_000) == pytest.approx(50.0)
    assert quantile_noise_multiplier(1_000) == pytest.approx(100.0)
    norms = np.full(100, 0.5)  # all under the clip: exact fraction 1.0
    rng = np.random.default_rng(0)
    estimates = np.array([noised_fraction_below(norms, 1.0, 100.0, rng) for _ in range(4_000)])
    assert estimates.mean() == pytest.approx(1.0, abs=0.01)
    assert estimates.std() == pytest.approx(count_noise_std(100.0) / 100.0, rel=0.05)


def test_the_quantile_query_is_charged_exactly() -> None:
    """Combined multiplier == composing the update query and the count query as two Gaussians."""
    z, zq = 1.0, 2.5
    composed = RdpAccountant()
    composed.compose(dp_accounting.GaussianDpEvent(z))
    composed.compose(dp_accounting.GaussianDpEvent(zq))
    combined = RdpAccountant()
    combined.compose(dp_accounting.GaussianDpEvent(combined_noise_multiplier(z, zq)))
    assert combined.get_epsilon(1e-6) == pytest.approx(composed.get_epsilon(1e-6), rel=1e-9)
    assert combined_noise_multiplier(z, zq) < z  # the quantile is never free
    assert combined_noise_multiplier(z, None) == z
    assert combined_noise_multiplier(0.0, zq) == 0.0
