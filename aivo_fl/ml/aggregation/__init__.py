"""Aggregation: strategies behind one protocol (``strategies``), server optimizers applied after
the strategy (``server_optimizers``), and the streaming machinery they share (``base``)."""

from __future__ import annotations

from aivo_fl.ml.aggregation.base import Block, Delta, Segment, WeightedSum, assemble, block_of, plan_blocks, shapes_of
from aivo_fl.ml.aggregation.strategies import (
    IMPROVEMENT_FLOOR,
    ROBUST_STRATEGIES,
    STRATEGIES,
    SUM_STRATEGIES,
    TRIM_FRACTION,
    DpClipped,
    FedAvg,
    Median,
    Strategy,
    TrimmedMean,
    UpdateInfo,
    UpdateSource,
    Weighted,
    improvement_weight,
    strategy_named,
    trim_count,
)

__all__ = [
    "IMPROVEMENT_FLOOR",
    "ROBUST_STRATEGIES",
    "STRATEGIES",
    "SUM_STRATEGIES",
    "TRIM_FRACTION",
    "Block",
    "Delta",
    "DpClipped",
    "FedAvg",
    "Median",
    "Segment",
    "Strategy",
    "TrimmedMean",
    "UpdateInfo",
    "UpdateSource",
    "Weighted",
    "WeightedSum",
    "assemble",
    "block_of",
    "improvement_weight",
    "plan_blocks",
    "shapes_of",
    "strategy_named",
    "trim_count",
]
