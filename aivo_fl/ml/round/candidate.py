"""Steps 1-2 of a round composed: from what the round reads to its candidate heads.

Pure inputs, no database: the operations layer (registry + model store) and the benchmarks (in
memory) both call :func:`build_candidate`, then :func:`aivo_fl.ml.round.judge.judge_round` (the
curriculum anchor, the gate, with smaller server steps if it refuses), then persist in their own way.
A dry run builds the very same candidate, only without DP noise: nothing is released, so no
privacy is spent, and its gate verdict is the real one (exactly so with DP off).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from aivo_fl.ml.aggregation.base import Delta, FlatSum, shapes_of
from aivo_fl.ml.aggregation.server_optimizers import State, server_optimizer
from aivo_fl.ml.aggregation.strategies import DpClipped, FedAvg, strategy_named
from aivo_fl.ml.privacy.ledger import RoundPrivacy
from aivo_fl.ml.privacy.mechanism import BUDGET_SPENT
from aivo_fl.ml.round.accounting import (
    NOT_SAMPLED,
    PrivacyAccount,
    PrivacyHistory,
    account_round,
    draw_round,
    planned_settings,
    population_of,
    settle,
)
from aivo_fl.ml.round.aggregate import DeltaFiles, DeltasInMemory, private, step
from aivo_fl.ml.round.gather import (
    Contribution,
    FilesOf,
    FlatSource,
    InMemory,
    LearnerUpdate,
    NoEligibleLearners,
    Screened,
    Update,
    read_updates,
    screen,
)
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.store.deltas import DeltaReader


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
    # learner id -> delta, held in memory (a simulation of thousands of learners); None: the files.
    # A learner whose delta is not held is read from its file under ``learners_root``.
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
    aggregate: Delta  # the strategy's (released) aggregate: backtracking rebuilds smaller steps from it
    step_scale: float = 1.0  # the server step's scale (backtracking: 1/2, 1/4, ... when the gate refused more)
    curriculum_anchor: Mapping[str, Any] | None = None  # how the judged candidate was anchored (None: it was not)

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


def _contributions(
    offered: Sequence[LearnerUpdate], read: _Read, accounted: PrivacyAccount, weights: Sequence[float]
) -> list[Contribution]:
    """Each offered update as recorded: drawn (weight, clipped), eligible but not drawn, out of budget,
    refused by the metadata or file checks."""
    screened = read.screened
    reasons = list(screened.reasons)
    norms: list[float | None] = [None] * len(reasons)
    shares, clipped, charged = [0.0] * len(reasons), [False] * len(reasons), [False] * len(reasons)
    for index, reason in read.refused.items():
        reasons[index] = reason
    for update in read.usable:
        norms[update.index] = update.norm
    for update in accounted.out_of_budget:
        reasons[update.index] = BUDGET_SPENT
    for update in accounted.not_sampled:
        reasons[update.index], charged[update.index] = NOT_SAMPLED, True
    for update in accounted.refused:
        charged[update.index] = True
    clip_norm = accounted.record.clip_norm
    for update, weight in zip(accounted.included, weights, strict=True):
        shares[update.index], charged[update.index] = weight, True
        clipped[update.index] = clip_norm is not None and update.norm > clip_norm
    return [
        Contribution(u.learner_id, shares[i], norms[i], clipped[i], reasons[i], screened.behind[i], charged[i])
        for i, u in enumerate(offered)
    ]


@dataclass(frozen=True)
class _Read:
    """What the round read: the screening, the usable updates (norms known), the refused files."""

    screened: Screened
    usable: list[Update]
    refused: dict[int, str]
    accounted: PrivacyAccount
    acc: FlatSum  # the sum strategy's running sum of the included updates (unused by robust ones)
    privacy: PrivacySettings  # the round's knobs (the planner's noise and sample rate under a target)


def _read_and_account(
    state: RoundState, options: RoundOptions, privacy: PrivacySettings, now: datetime, rng: np.random.Generator
) -> _Read:
    """Screen, draw and read: each needed delta file read once, folded into the running sum as it is.

    Under sampling (rate < 1) the draw comes first, from every update that passed the metadata
    checks, and only the drawn learners' files are read (a drawn learner whose file is refused stays
    in the population, charged). At rate 1 everyone is drawn: every file is read first, and a
    refused one leaves the population, as the accounting then only sees usable updates.
    """
    shapes = shapes_of(state.base_heads)
    screened = screen(state.offered, state.base_version, state.lineage, options, now)
    privacy = planned_settings(privacy, len(screened.candidates))
    acc = FlatSum(shapes)
    source = _source(state, acc)
    coefficient = _folding(options, privacy, state.privacy_history)
    release = not options.dry_run
    history = state.privacy_history
    if privacy.sample_rate < 1.0:
        draw = draw_round(privacy, history, screened.candidates, rng)
        usable, refused = read_updates(draw.drawn, source, options.max_delta_norm, acc, coefficient)
        accounted = settle(draw, usable, history, privacy, rng, release=release)
        return _Read(screened, usable, refused, accounted, acc, privacy)
    # Learners past their own budget are known from the metadata (but still read, for their report).
    expected_out = {u.learner_id for u in population_of(privacy, history, screened.candidates)[1]}
    usable, refused = read_updates(screened.candidates, source, options.max_delta_norm, acc, coefficient, expected_out)
    accounted = account_round(privacy, history, usable, rng, release=release)
    if coefficient is not None and {u.learner_id for u in accounted.out_of_budget} != expected_out & {
        u.learner_id for u in usable
    }:
        # Adaptive clipping's charge depends on the population's size, which refused files changed:
        # rare enough to fold the included deltas again rather than keep them all.
        acc = FlatSum(shapes)
        _, changed = read_updates(accounted.included, source, options.max_delta_norm, acc, coefficient)
        if changed:
            raise ValueError(f"delta file(s) changed during the round: {sorted(changed.values())}")
    return _Read(screened, usable, refused, accounted, acc, privacy)


def _source(state: RoundState, acc: FlatSum) -> FlatSource:
    files = FilesOf(DeltaReader(state.learners_root, acc.shapes))
    if state.in_memory is None:
        return files
    return InMemory(state.in_memory, acc.shapes, acc.layout, files)


def _folding(
    options: RoundOptions, privacy: PrivacySettings, history: PrivacyHistory
) -> Callable[[Update, float], float] | None:
    """The sum strategy's per-learner coefficient, for folding while reading; None for robust ones.

    DP's coefficient (capped weight x clipping scale) depends on neither the denominator nor the
    noise, so it is known before the accounting is.
    """
    strategy = strategy_named(options.strategy, options.trim_fraction)
    folding = private(strategy, privacy, history.clip_norm(privacy), 1.0, None)
    return folding.coefficient if isinstance(folding, FedAvg | DpClipped) else None


def build_candidate(
    state: RoundState, options: RoundOptions, privacy: PrivacySettings, now: datetime, rng: np.random.Generator
) -> RoundResult:
    """Gather, account and aggregate. Raises ``ValueError`` (bad options), ``PrivacyBudgetExceeded``
    (global budget) and ``NoEligibleLearners`` (fewer than ``min_learners`` usable updates)."""
    strategy = strategy_named(options.strategy, options.trim_fraction)
    optimizer = server_optimizer(options.server_optimizer, options.learning_rate)
    read = _read_and_account(state, options, privacy, now, rng)
    accounted, privacy = read.accounted, read.privacy
    if len(accounted.included) < options.min_learners:
        raise NoEligibleLearners(
            len(accounted.included), read.screened.trained_in_window, options.min_learners, options.max_stale_days
        )
    clip = accounted.record.clip_norm or privacy.clip_norm
    strategy = private(strategy, privacy, clip, accounted.denominator, None if options.dry_run else rng)
    if isinstance(strategy, FedAvg | DpClipped):
        update = strategy.finish(read.acc)
    else:
        update = strategy.aggregate(_blocks_of(state, accounted.included, options))
    weights = strategy.weights(accounted.included)
    aggregated = step(update, weights, state.base_heads, optimizer, state.optimizer_state)
    noisy = isinstance(strategy, DpClipped) and not options.dry_run
    return RoundResult(
        base_version=state.base_version,
        strategy=strategy.name,
        server_optimizer=optimizer.name,
        learning_rate=optimizer.learning_rate,
        candidate_heads=aggregated.heads,
        optimizer_state=aggregated.optimizer_state,
        aggregate_norm=aggregated.aggregate_norm,
        contributions=_contributions(state.offered, read, accounted, weights),
        trained_in_window=read.screened.trained_in_window,
        privacy=accounted,
        noise_std=strategy.released_noise_std if noisy else None,
        dry_run=options.dry_run,
        aggregate=update,
    )


def _blocks_of(state: RoundState, included: Sequence[Update], options: RoundOptions) -> DeltaFiles | DeltasInMemory:
    shapes = shapes_of(state.base_heads)
    if state.in_memory is None:
        return DeltaFiles(included, state.learners_root, shapes, options.max_delta_norm, options.block_bytes)
    return DeltasInMemory(
        included, state.in_memory, shapes, options.block_bytes, state.learners_root, options.max_delta_norm
    )
