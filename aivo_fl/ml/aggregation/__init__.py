"""Aggregation strategies, one per module, pure numpy and streaming.

* sum-based (``fedavg``, ``weighted``): consume ``(delta, weight)`` pairs into a running sum.
* robust (``trimmed_mean``, ``median``): consume ``(block, learners x block matrix)`` pairs.
"""

from __future__ import annotations

from aivo_fl.ml.aggregation.base import (
    Block,
    Delta,
    Segment,
    WeightedSum,
    assemble,
    block_of,
    plan_blocks,
    shapes_of,
)
from aivo_fl.ml.aggregation.fedavg import fedavg, fedavg_weight
from aivo_fl.ml.aggregation.median import median, median_block
from aivo_fl.ml.aggregation.trimmed_mean import TRIM_FRACTION, trim_count, trimmed_mean, trimmed_mean_block
from aivo_fl.ml.aggregation.weighted import IMPROVEMENT_FLOOR, improvement_weight, weighted

# Server learning rate 1.0: with DP off, fedavg then *is* model averaging (McMahan et al. 2017),
# the setting the delta semantics were designed for (delta = trained heads - main heads). A smaller
# rate only slows learning; harmful rounds are stopped by the validation gate, not by damping.
DEFAULT_LEARNING_RATE = 1.0

SUM_STRATEGIES: tuple[str, ...] = ("fedavg", "weighted")
ROBUST_STRATEGIES: tuple[str, ...] = ("trimmed_mean", "median")
STRATEGIES: tuple[str, ...] = SUM_STRATEGIES + ROBUST_STRATEGIES


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"Unknown aggregation strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}")
    return name


def raw_weight(strategy: str, num_samples: int, improvement: float) -> float:
    """A learner's un-normalised weight under a sum-based strategy (robust ones are unweighted)."""
    check_strategy(strategy)
    if strategy == "weighted":
        return improvement_weight(num_samples, improvement)
    if strategy == "fedavg":
        return fedavg_weight(num_samples)
    return 1.0


__all__ = [
    "IMPROVEMENT_FLOOR",
    "ROBUST_STRATEGIES",
    "STRATEGIES",
    "SUM_STRATEGIES",
    "TRIM_FRACTION",
    "Block",
    "Delta",
    "Segment",
    "WeightedSum",
    "assemble",
    "block_of",
    "check_strategy",
    "fedavg",
    "fedavg_weight",
    "improvement_weight",
    "median",
    "median_block",
    "plan_blocks",
    "raw_weight",
    "shapes_of",
    "trim_count",
    "trimmed_mean",
    "trimmed_mean_block",
    "weighted",
]
