"""Steps 1-2 of a round composed: from what the round reads to its candidate heads.

Pure inputs, no database: the operations layer (registry + model store) and the benchmarks (in
memory) both call :func:`build_candidate`, then :func:`aivo_fl.ml.round.gate.gate`, then persist
in their own way. A dry run builds the very same candidate, only without DP noise: nothing is
released, so no privacy is spent, and its gate verdict is the real one (exactly so with DP off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from aivo_fl.ml.aggregation.base import Delta, shapes_of
from aivo_fl.ml.aggregation.server_optimizers import State, server_optimizer
from aivo_fl.ml.aggregation.strategies import DpClipped, strategy_named
from aivo_fl.ml.privacy import BUDGET_SPENT
from aivo_fl.ml.privacy_ledger import RoundPrivacy
from aivo_fl.ml.round.accounting import NOT_SAMPLED, PrivacyAccount, PrivacyHistory, account_round
from aivo_fl.ml.round.aggregate import Aggregated, DeltaFiles, DeltasInMemory, aggregate, private
from aivo_fl.ml.round.gather import Contribution, Gathered, LearnerUpdate, NoEligibleLearners, gather
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions


@dataclass(frozen=True)
class RoundState:
    """Everything a round reads."""

    base_version: str
    base_heads: Mapping[str, np.ndarray]
    lineage: Sequence[str]  # promoted versions, oldest first; the base is among them
    offered: Sequence[LearnerUpdate]
    learners_root: Path  # every offered delta file must lie inside it (the learners' model store)
    privacy_history: PrivacyHistory = field(default_factory=PrivacyHistory)
    optimizer_state: State = field(default_factory=dict)  # the base version's server-optimizer state
    # learner id -> delta, held in memory (a simulation of thousands of learners); None: the files
    in_memory: Mapping[str, Delta] | None = None


@dataclass(frozen=True)
class RoundResult:
    base_version: str
    strategy: str
    server_optimizer: str
    learning_rate: float
    candidate_heads: dict[str, np.ndarray]  # float32, same names/shapes as the base
    optimizer_state: State  # persist with the candidate
    aggregate_norm: float
    contributions: list[Contribution]
    trained_in_window: int
    privacy: PrivacyAccount
    noise_std: float | None  # std of the noise on the released average (None without DP or on a dry run)
    dry_run: bool

    @property
    def privacy_record(self) -> RoundPrivacy | None:
        """What to record with the round (DP or not): None only on a dry run, which releases nothing."""
        return None if self.dry_run else self.privacy.record

    @property
    def clip_norm(self) -> float | None:
        """The clip norm the round used (adaptive under CLIP_NORM=auto); None without DP."""
        return self.privacy.record.clip_norm

    @property
    def included(self) -> list[Contribution]:
        return [c for c in self.contributions if c.excluded_reason is None]

    @property
    def excluded(self) -> list[Contribution]:
        return [c for c in self.contributions if c.excluded_reason is not None]


def _contributions(gathered: Gathered, accounted: PrivacyAccount, aggregated: Aggregated) -> list[Contribution]:
    """Each offered update as recorded: drawn (weight, clipped), eligible but not drawn, out of budget."""
    out = list(gathered.screened)
    for update in accounted.out_of_budget:
        out[update.index] = replace(out[update.index], excluded_reason=BUDGET_SPENT)
    for update in accounted.not_sampled:
        out[update.index] = replace(out[update.index], excluded_reason=NOT_SAMPLED, charged=True)
    clip_norm = accounted.record.clip_norm
    for update, weight in zip(accounted.included, aggregated.weights, strict=True):
        clipped = clip_norm is not None and update.norm > clip_norm
        out[update.index] = replace(out[update.index], weight=weight, clipped=clipped, charged=True)
    return out


def build_candidate(
    state: RoundState, options: RoundOptions, privacy: PrivacySettings, now: datetime, rng: np.random.Generator
) -> RoundResult:
    """Gather, account and aggregate. Raises ``ValueError`` (bad options), ``PrivacyBudgetExceeded``
    (global budget) and ``NoEligibleLearners`` (fewer than ``min_learners`` usable updates)."""
    strategy = strategy_named(options.strategy, options.trim_fraction)
    optimizer = server_optimizer(options.server_optimizer, options.learning_rate)
    shapes = shapes_of(state.base_heads)
    gathered = gather(
        state.offered, state.learners_root, shapes, state.base_version, state.lineage, options, now, state.in_memory
    )
    accounted = account_round(privacy, state.privacy_history, gathered, rng, release=not options.dry_run)
    if len(accounted.included) < options.min_learners:
        raise NoEligibleLearners(
            len(accounted.included), gathered.trained_in_window, options.min_learners, options.max_stale_days
        )
    clip = accounted.record.clip_norm or privacy.clip_norm
    strategy = private(strategy, privacy, clip, accounted.denominator, None if options.dry_run else rng)
    source: DeltaFiles | DeltasInMemory = (
        DeltaFiles(accounted.included, state.learners_root, shapes, options.max_delta_norm, options.block_bytes)
        if state.in_memory is None
        else DeltasInMemory(accounted.included, state.in_memory, shapes, options.block_bytes)
    )
    aggregated = aggregate(source, state.base_heads, strategy, optimizer, state.optimizer_state)
    noisy = isinstance(strategy, DpClipped) and not options.dry_run
    return RoundResult(
        base_version=state.base_version,
        strategy=strategy.name,
        server_optimizer=optimizer.name,
        learning_rate=optimizer.learning_rate,
        candidate_heads=aggregated.heads,
        optimizer_state=aggregated.optimizer_state,
        aggregate_norm=aggregated.aggregate_norm,
        contributions=_contributions(gathered, accounted, aggregated),
        trained_in_window=gathered.trained_in_window,
        privacy=accounted,
        noise_std=strategy.released_noise_std if noisy else None,
        dry_run=options.dry_run,
    )
