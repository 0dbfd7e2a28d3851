"""Adaptive clipping: the clip norm follows a noised quantile of the update norms.

After Andrew, Thakkar, McMahan and Ramaswamy, "Differentially Private Learning with Adaptive
Clipping" (NeurIPS 2021). Each sampled learner also contributes one bit, "my update's norm was at
most the current clip norm", centred to -1/2 or +1/2 so that adding or removing a learner moves
their sum by at most 1/2. The server adds Gaussian noise of std ``sigma_b`` to the sum, divides by
the expected cohort (the same fixed denominator as the updates) and moves the clip norm
geometrically towards the target quantile:

    C_next = C * exp(-eta * (fraction_below - target_quantile))

The count is a second Gaussian query on the same sampled learners, with noise multiplier
``2 * sigma_b``. The two compose into ONE Gaussian mechanism with noise multiplier
``(z**-2 + (2 sigma_b)**-2) ** -1/2`` (the paper's Theorem 1), which is what the accountant is
charged: the quantile's noise is part of the accounting, not a free extra.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

DEFAULT_TARGET_QUANTILE = 0.5  # the paper's default: clip at the median update norm
DEFAULT_CLIP_LEARNING_RATE = 0.2  # the paper's eta_C for geometric updates
DEFAULT_INITIAL_CLIP_NORM = 1.0  # first round under CLIP_NORM=auto; later rounds follow the quantile
COUNT_NOISE_FRACTION = 0.05  # sigma_b = expected cohort / 20 (the paper's setting)


def check_target_quantile(target: float) -> float:
    if not 0.0 < target < 1.0:
        raise ValueError(f"target quantile must be in (0, 1), got {target}")
    return target


def count_noise_std(expected_cohort: float) -> float:
    """``sigma_b``: std of the noise on the centred count."""
    return COUNT_NOISE_FRACTION * expected_cohort


def quantile_noise_multiplier(expected_cohort: float) -> float:
    """Noise multiplier of the count query (its sensitivity is 1/2)."""
    return 2.0 * count_noise_std(expected_cohort)


def combined_noise_multiplier(noise_multiplier: float, *others: float | None) -> float:
    """One Gaussian mechanism equivalent to the update query plus the other Gaussian queries on the
    same sampled learners (adaptive clipping's count, the private gate; None: that query is off)."""
    multipliers = [noise_multiplier, *(z for z in others if z is not None)]
    if any(z <= 0 for z in multipliers):
        return 0.0  # a query released without noise: no guarantee
    return sum(z**-2 for z in multipliers) ** -0.5


def noised_fraction_below(
    norms: Iterable[float], clip_norm: float, expected_cohort: float, rng: np.random.Generator
) -> float:
    """The released estimate of the fraction of updates whose norm is at most ``clip_norm``."""
    centred = sum((1.0 if norm <= clip_norm else 0.0) - 0.5 for norm in norms)
    noisy = centred + rng.normal(0.0, count_noise_std(expected_cohort))
    return noisy / expected_cohort + 0.5


def next_clip_norm(
    clip_norm: float,
    fraction_below: float,
    target_quantile: float,
    learning_rate: float = DEFAULT_CLIP_LEARNING_RATE,
) -> float:
    """Geometric step: more updates under the clip than the target -> lower the clip, and vice versa."""
    check_target_quantile(target_quantile)
    if not (clip_norm > 0 and math.isfinite(fraction_below)):
        raise ValueError(f"clip norm must be > 0 and the fraction finite, got {clip_norm}, {fraction_below}")
    return clip_norm * math.exp(-learning_rate * (fraction_below - target_quantile))
