"""Coordinate-wise median (Yin et al. 2018): each coordinate ignores up to half the learners.

Unweighted on purpose: a corrupted learner could claim any sample count.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from aivo_fl.ml.aggregation.base import Block, Delta, Shapes, assemble


def median_block(matrix: np.ndarray) -> np.ndarray:
    """matrix: (learners, block) -> (block,) coordinate-wise median."""
    if matrix.shape[0] == 0:
        raise ValueError("no learners to aggregate")
    return np.median(matrix, axis=0)


def median(blocks: Iterable[tuple[Block, np.ndarray]], shapes: Shapes) -> Delta:
    """Streamed over coordinate blocks: only one (learners x block) matrix is alive at a time."""
    return assemble(shapes, ((block, median_block(m)) for block, m in blocks))
