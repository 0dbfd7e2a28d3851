"""An in-memory UpdateSource: the strategies' protocol fed from deltas held in a list."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from aivo_fl.ml.aggregation.base import Block, block_of, plan_blocks


@dataclass(frozen=True)
class Info:
    num_samples: int = 1
    improvement: float = 0.0
    factor: float = 1.0


@dataclass
class MemorySource:
    deltas_: Sequence[Mapping[str, np.ndarray]]
    shapes: Mapping[str, tuple[int, ...]]
    infos: Sequence[Info] = field(default_factory=list)
    block_elems: int = 16

    def __post_init__(self) -> None:
        if not self.infos:
            self.infos = [Info() for _ in self.deltas_]

    def deltas(self) -> Iterator[dict[str, np.ndarray]]:
        for d in self.deltas_:
            yield dict(d)

    def blocks(self, scales: Sequence[float]) -> Iterator[tuple[Block, np.ndarray]]:
        for block in plan_blocks(self.shapes, self.block_elems):
            rows = [block_of(d, block).astype(np.float64) * s for d, s in zip(self.deltas_, scales, strict=True)]
            yield block, np.stack(rows)
