"""Improvement-weighted averaging: sample count x measured local improvement.

A learner whose local training helped its own held-out accuracy more pulls harder. Improvement can
be zero or negative (noisy small held-out sets), so it is clamped to a small positive floor: nobody
gets a negative weight (which would push the model *towards* the opposite of their update), and a
cohort where nobody improved degrades gracefully to plain FedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from aivo_fl.ml.aggregation.base import Delta, Shapes, WeightedSum

IMPROVEMENT_FLOOR = 0.01  # one accuracy point: a non-improving learner still counts a little


def improvement_weight(num_samples: int, improvement: float, floor: float = IMPROVEMENT_FLOOR) -> float:
    if floor <= 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    gain = improvement if improvement == improvement else floor  # NaN -> floor
    return float(num_samples) * max(float(gain), floor)


def weighted(updates: Iterable[tuple[Mapping[str, np.ndarray], float]], shapes: Shapes) -> Delta:
    """Mean of ``(delta, improvement_weight)`` pairs; same running-sum machinery as FedAvg."""
    acc = WeightedSum(shapes)
    for delta, weight in updates:
        acc.add(delta, weight)
    return acc.mean()


IMPROVEMENT_FULL_WEIGHT = 0.10  # under DP: ten accuracy points of local gain earn the full weight


def improvement_factor(improvement: float, floor: float = IMPROVEMENT_FLOOR) -> float:
    """Improvement mapped into [floor / 0.10, 1] by FIXED constants, for use under DP.

    DP needs every learner's weight <= 1 without looking at other learners (normalising by the
    cohort's best improvement would let one learner change everybody's weight).
    """
    gain = improvement if improvement == improvement else floor
    return min(max(float(gain), floor) / IMPROVEMENT_FULL_WEIGHT, 1.0)
