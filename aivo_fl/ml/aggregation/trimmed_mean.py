"""Coordinate-wise trimmed mean (Yin et al. 2018).

For every coordinate, drop the ``k`` largest and ``k`` smallest learner values and average the
rest. Unweighted on purpose: a corrupted learner could claim any sample count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from aivo_fl.ml.aggregation.base import Block, Delta, Shapes, assemble

TRIM_FRACTION = 0.1  # per side


def trim_count(num_learners: int, trim_fraction: float = TRIM_FRACTION) -> int:
    """Values dropped per side: ceil(fraction x n) so that 3+ learners always lose their extremes,
    but never so many that nothing is left."""
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    k = math.ceil(trim_fraction * num_learners)
    return max(0, min(k, (num_learners - 1) // 2))


def trimmed_mean_block(matrix: np.ndarray, trim_fraction: float = TRIM_FRACTION) -> np.ndarray:
    """matrix: (learners, block) -> (block,) trimmed mean along the learner axis."""
    n = matrix.shape[0]
    if n == 0:
        raise ValueError("no learners to aggregate")
    k = trim_count(n, trim_fraction)
    ordered = np.sort(matrix, axis=0)
    return ordered[k : n - k].mean(axis=0, dtype=np.float64)


def trimmed_mean(
    blocks: Iterable[tuple[Block, np.ndarray]], shapes: Shapes, trim_fraction: float = TRIM_FRACTION
) -> Delta:
    """Streamed over coordinate blocks: only one (learners x block) matrix is alive at a time."""
    return assemble(shapes, ((block, trimmed_mean_block(m, trim_fraction)) for block, m in blocks))
