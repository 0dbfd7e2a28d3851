"""Step 2 of a round, aggregate: the strategy (DP-wrapped when on) over the included updates, then
the server optimizer's step from the base heads to the candidate heads.

Sum strategies (fedavg, weighted, DP or not) are folded while the files are read
(:func:`aivo_fl.ml.round.gather.read_updates`): one read per file, and here only the finish.
Robust strategies read coordinate blocks of every included file (:class:`DeltaFiles`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aivo_fl.ml.aggregation.base import Block, Delta, block_of, delta_norm, plan_blocks
from aivo_fl.ml.aggregation.server_optimizers import ServerOptimizer, State
from aivo_fl.ml.aggregation.strategies import DpClipped, Strategy
from aivo_fl.ml.round.gather import Update
from aivo_fl.ml.round.options import PrivacySettings
from aivo_fl.ml.store.deltas import iter_stacked_blocks, load_delta


@dataclass(frozen=True)
class DeltaFiles:
    """The included updates' delta files as a robust strategy reads them, block by block
    (re-validated on every read: a file that changed since it was first read fails the round
    rather than slipping in)."""

    infos: Sequence[Update]
    learners_root: Path
    shapes: Mapping[str, tuple[int, ...]]
    max_norm: float
    block_bytes: int

    def deltas(self) -> Iterator[Delta]:
        for update in self.infos:
            yield load_delta(update.path, self.learners_root, self.shapes, self.max_norm)[0]

    def blocks(self, scales: Sequence[float]) -> Iterator[tuple[Block, np.ndarray]]:
        block_elems = max(1, self.block_bytes // (8 * len(self.infos)))
        paths = [u.path for u in self.infos]
        blocks = plan_blocks(self.shapes, block_elems)
        yield from iter_stacked_blocks(paths, self.learners_root, self.shapes, blocks, scales=scales)


@dataclass(frozen=True)
class DeltasInMemory:
    """The included updates' deltas held in memory (a simulation's: learner id -> delta); one not
    held is read from its file under ``store_root``."""

    infos: Sequence[Update]
    by_learner: Mapping[str, Delta]
    shapes: Mapping[str, tuple[int, ...]]
    block_bytes: int
    store_root: Path
    max_norm: float

    def deltas(self) -> Iterator[Delta]:
        for update in self.infos:
            held = self.by_learner.get(update.learner_id)
            yield held if held is not None else load_delta(update.path, self.store_root, self.shapes, self.max_norm)[0]

    def blocks(self, scales: Sequence[float]) -> Iterator[tuple[Block, np.ndarray]]:
        for block in plan_blocks(self.shapes, max(1, self.block_bytes // (8 * len(self.infos)))):
            matrix = np.stack([block_of(d, block) for d in self.deltas()]).astype(np.float64)
            yield block, matrix * np.asarray(scales, dtype=np.float64)[:, None]


def private(
    strategy: Strategy, privacy: PrivacySettings, clip_norm: float, denominator: float, rng: np.random.Generator | None
) -> Strategy:
    """``strategy`` wrapped in DP-FedAvg when privacy is on; ``rng=None`` adds no noise (a dry run).

    ``clip_norm`` is the round's (adaptive under ``CLIP_NORM=auto``), ``denominator`` the expected cohort.
    """
    if not privacy.enabled:
        return strategy
    return DpClipped(
        strategy,  # type: ignore[arg-type]  # DpClipped refuses non-sum strategies with a clear error
        clip_norm,
        privacy.noise_multiplier,
        denominator,
        privacy.sample_cap,
        rng,
    )


@dataclass(frozen=True)
class Aggregated:
    heads: dict[str, np.ndarray]  # the candidate's heads, float32, same names and shapes as the base
    weights: list[float]  # per included update, in order
    aggregate_norm: float  # L2 norm of the strategy's aggregate (before the server step)
    optimizer_state: State  # to persist with the candidate


def step(
    update: Delta,
    weights: list[float],
    base_heads: Mapping[str, np.ndarray],
    optimizer: ServerOptimizer,
    optimizer_state: State,
) -> Aggregated:
    """The server optimizer's step along the strategy's aggregate ``update``."""
    moved, state = optimizer.step(base_heads, update, optimizer_state)
    heads = {name: moved[name].astype(np.float32) for name in base_heads}
    return Aggregated(heads, weights, delta_norm(update), state)
