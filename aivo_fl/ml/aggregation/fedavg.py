"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the learners' deltas."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from aivo_fl.ml.aggregation.base import Delta, Shapes, WeightedSum


def fedavg_weight(num_samples: int, improvement: float = 0.0) -> float:
    """A learner counts in proportion to the samples it trained on (``improvement`` is unused)."""
    return float(num_samples)


def fedavg(updates: Iterable[tuple[Mapping[str, np.ndarray], float]], shapes: Shapes) -> Delta:
    """Weighted mean of ``(delta, weight)`` pairs, streamed: memory is one delta in float64."""
    acc = WeightedSum(shapes)
    for delta, weight in updates:
        acc.add(delta, weight)
    return acc.mean()
