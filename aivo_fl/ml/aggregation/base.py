"""Shared pieces of the aggregation strategies: delta type, coordinate blocks, running sums.

Strategies never hold every learner's delta at once. Sum-based strategies (fedavg, weighted) keep
one float64 running sum the size of a single delta; robust coordinate-wise strategies (median,
trimmed mean) look at one *block* of coordinates of all learners at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

Delta = dict[str, np.ndarray]
Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Segment:
    """Rows [row_start, row_stop) of tensor ``name`` (the first axis; scalars have one row)."""

    name: str
    row_start: int
    row_stop: int
    row_size: int

    @property
    def size(self) -> int:
        return (self.row_stop - self.row_start) * self.row_size


@dataclass(frozen=True)
class Block:
    segments: tuple[Segment, ...]

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments)


def plan_blocks(shapes: Shapes, block_elems: int) -> list[Block]:
    """Cut all tensors (sorted by name) into blocks of at most ``block_elems`` coordinates.

    Cuts follow whole rows so a block can be read with a plain first-axis slice; a single row
    larger than ``block_elems`` becomes its own block.
    """
    if block_elems < 1:
        raise ValueError(f"block_elems must be >= 1, got {block_elems}")
    blocks: list[Block] = []
    current: list[Segment] = []
    used = 0
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        rows = shape[0] if shape else 1
        row_size = math.prod(shape[1:]) if shape else 1
        row = 0
        while row < rows:
            room = block_elems - used
            take = min(rows - row, max(room // row_size, 0))
            if take == 0:
                if current:
                    blocks.append(Block(tuple(current)))
                    current, used = [], 0
                    continue
                take = 1  # one row wider than a block
            current.append(Segment(name, row, row + take, row_size))
            used += take * row_size
            row += take
            if used >= block_elems:
                blocks.append(Block(tuple(current)))
                current, used = [], 0
    if current:
        blocks.append(Block(tuple(current)))
    return blocks


def _rows(array: np.ndarray, row_size: int) -> np.ndarray:
    return np.asarray(array).reshape(-1, row_size)


def block_of(delta: Mapping[str, np.ndarray], block: Block) -> np.ndarray:
    """The coordinates of ``block`` in an in-memory delta, flattened (the file reader's twin)."""
    return np.concatenate(
        [_rows(delta[s.name], s.row_size)[s.row_start : s.row_stop].reshape(-1) for s in block.segments]
    )


def assemble(shapes: Shapes, results: Iterable[tuple[Block, np.ndarray]]) -> Delta:
    """Write per-block results (flat float64 vectors) back into tensors of ``shapes``."""
    out = {name: np.zeros(shape, dtype=np.float64) for name, shape in shapes.items()}
    for block, values in results:
        offset = 0
        for seg in block.segments:
            target = _rows(out[seg.name], seg.row_size)  # a view: writes land in ``out``
            target[seg.row_start : seg.row_stop] = values[offset : offset + seg.size].reshape(-1, seg.row_size)
            offset += seg.size
    return out


class WeightedSum:
    """Running sum of weighted deltas in float64: memory is one delta, whatever the learner count."""

    def __init__(self, shapes: Shapes) -> None:
        self.total: Delta = {name: np.zeros(shape, dtype=np.float64) for name, shape in shapes.items()}
        self.weight = 0.0
        self.count = 0

    def add(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be finite and >= 0, got {weight}")
        if set(delta) != set(self.total):
            raise ValueError("delta tensor names differ from the aggregate's")
        for name, acc in self.total.items():
            acc += weight * np.asarray(delta[name], dtype=np.float64)
        self.weight += weight
        self.count += 1

    def mean(self) -> Delta:
        if self.weight <= 0:
            raise ValueError("cannot average: total weight is zero")
        return {name: acc / self.weight for name, acc in self.total.items()}


def vector_norm(values: np.ndarray) -> float:
    """L2 norm accumulated in float64. float32 squares cannot overflow float64, so for float32
    input the result is finite exactly when every value is (one dot product checks both)."""
    wide = np.asarray(values, dtype=np.float64).reshape(-1)
    return math.sqrt(float(wide @ wide))


def delta_norm(delta: Mapping[str, np.ndarray]) -> float:
    """Whole-delta L2 norm across all tensors, accumulated in float64: the project's one norm."""
    return math.sqrt(sum(vector_norm(v) ** 2 for v in delta.values()))


def shapes_of(delta: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(np.shape(v)) for name, v in delta.items()}
