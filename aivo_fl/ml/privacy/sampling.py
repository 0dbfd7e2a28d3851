"""Poisson learner sampling and the fixed DP-FedAvg denominator (McMahan et al. 2018).

Each eligible learner joins a round independently with probability ``q``; nobody sees the draw
except the round itself, which is what lets the accountant claim amplification by sampling
(``PoissonSampledDpEvent``). The released average is divided by the *expected* cohort
``q x population``, never by the realized number of participants: the realized count depends on
whether one particular learner took part, the expected one does not.

The population size (learners eligible for the round) is treated as public: it is recorded with
the round and shown by ``history``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def check_sample_rate(rate: float) -> float:
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"learner sample rate must be in (0, 1], got {rate}")
    return rate


def poisson_sample(population: Sequence[T], rate: float, rng: np.random.Generator) -> list[T]:
    """Each member independently with probability ``rate`` (all of them at rate 1).

    The caller must pass an unpredictable generator in production (``np.random.default_rng()``
    draws its seed from the OS): amplification assumes nobody can predict or observe the draw.
    """
    check_sample_rate(rate)
    if rate == 1.0:
        return list(population)
    drawn = rng.random(len(population)) < rate
    return [member for member, keep in zip(population, drawn, strict=True) if keep]


def expected_cohort(rate: float, population: int) -> float:
    """The fixed denominator ``q x population`` (at least 1, so a tiny population cannot blow it up)."""
    check_sample_rate(rate)
    if population < 0:
        raise ValueError(f"population must be >= 0, got {population}")
    return max(rate * population, 1.0)
