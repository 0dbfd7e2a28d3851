"""Shared pieces of the aggregation strategies: delta type, coordinate blocks, running sums.

Strategies never hold every learner's delta at once. Sum-based strategies (fedavg, weighted) keep
one float64 running sum the size of a single delta (:class:`FlatSum`); robust coordinate-wise strategies (median,
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


Layout = tuple[tuple[str, tuple[int, ...], int, int], ...]  # (name, shape, first, last element)


def flat_layout(shapes: Shapes) -> Layout:
    """Where each tensor lies in a flat delta: names in sorted order, back to back."""
    layout, position = [], 0
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        size = math.prod(shape)
        layout.append((name, shape, position, position + size))
        position += size
    return tuple(layout)


def flatten(delta: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
    """An in-memory delta as one flat vector in ``layout`` order (a delta file's data section, as
    float64 so that a float64 delta loses nothing; a float32 one converts exactly)."""
    return np.concatenate([np.asarray(delta[name], dtype=np.float64).reshape(-1) for name, *_ in layout])


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


class FlatSum:
    """Weighted running sum of flat deltas, the hot path of a sum strategy's round.

    A delta is one float32 vector, its tensors in name order (:func:`flat_layout`: what a
    safetensors file of the heads holds, so a file's data section is used as is). Rows wait in a
    small float64 buffer and are folded with one matrix-vector product per ``batch`` rows: per
    learner, one copy into the buffer and one dot product for its norm, instead of a dozen numpy
    calls on tiny tensors. Memory: ``batch`` deltas, whatever the learner count. The fold order
    depends only on the sequence of committed rows, so the same updates give the same sum bit for
    bit, from files or from memory, with or without rejected files in between.
    """

    def __init__(self, shapes: Shapes, batch: int = 256) -> None:
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.layout = flat_layout(shapes)
        size = self.layout[-1][3] if self.layout else 0
        self.total = np.zeros(size, dtype=np.float64)
        self._rows = np.empty((batch, size), dtype=np.float64)
        self._coefficients = np.empty(batch, dtype=np.float64)
        self._pending = 0
        self.weight = 0.0
        self.count = 0

    def stage(self, flat: np.ndarray) -> float:
        """Copy ``flat`` into the next free row (in float64) and return its squared L2 norm.

        The row is only folded in by :meth:`commit`; staging another row first discards it.
        """
        row = self._rows[self._pending]
        row[:] = flat
        return float(row @ row)

    def commit(self, coefficient: float) -> None:
        """Fold the staged row in with ``coefficient``."""
        if not math.isfinite(coefficient) or coefficient < 0:
            raise ValueError(f"weight must be finite and >= 0, got {coefficient}")
        self._coefficients[self._pending] = coefficient
        self._pending += 1
        self.weight += coefficient
        self.count += 1
        if self._pending == len(self._rows):
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.total += self._coefficients[: self._pending] @ self._rows[: self._pending]
            self._pending = 0

    def tensors(self) -> Delta:
        """The sum so far as float64 tensors of the layout's names and shapes."""
        self._flush()
        return {name: self.total[start:stop].reshape(shape) for name, shape, start, stop in self.layout}


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
