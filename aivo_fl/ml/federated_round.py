"""One federated round: pure inputs -> candidate heads, contributions and privacy numbers.

No database and no model registry here: the caller hands in the active heads, the version history,
the learners' update records and the privacy events recorded so far, and persists what comes back
(the candidate only after :func:`aivo_fl.ml.validation_gate.validate_candidate` accepts it).

Only the heads move: the trunk is frozen in every clone, so deltas are ``heads.*`` tensors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from aivo_fl.ml.aggregation import (
    DEFAULT_LEARNING_RATE,
    ROBUST_STRATEGIES,
    SUM_STRATEGIES,
    WeightedSum,
    check_strategy,
    median,
    plan_blocks,
    raw_weight,
    trimmed_mean,
)
from aivo_fl.ml.aggregation.base import Delta, delta_norm, shapes_of
from aivo_fl.ml.aggregation.trimmed_mean import TRIM_FRACTION
from aivo_fl.ml.aggregation.weighted import improvement_factor
from aivo_fl.ml.deltas import DeltaRejected, iter_stacked_blocks, load_delta
from aivo_fl.ml.privacy import (
    BUDGET_SPENT,
    DEFAULT_DELTA,
    DEFAULT_SAMPLE_CAP,
    DpSum,
    PrivacyEvent,
    check_global_budget,
    dp_weight,
    epsilon_for_events,
    epsilon_warning,
    noise_std,
)
from aivo_fl.ml.validation_gate import DEFAULT_TOLERANCE, GateResult, validate_candidate, with_heads

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_TOLERANCE",
    "Contribution",
    "GateResult",
    "LearnerUpdate",
    "NoEligibleLearners",
    "PrivacySettings",
    "RoundOptions",
    "RoundResult",
    "aggregate_round",
    "next_version",
    "staleness_factor",
    "validate_candidate",
    "with_heads",
]

# Heads deltas from a few local epochs have L2 norms around 0.1-5; a norm of 1000 can only be a
# corrupted or malicious file, and would swamp every non-robust strategy.
DEFAULT_MAX_DELTA_NORM = 1e3
# Robust strategies hold a (learners x block) float64 matrix; the block is sized to this budget.
DEFAULT_BLOCK_BYTES = 32 * 1024 * 1024
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


@dataclass(frozen=True)
class LearnerUpdate:
    learner_id: str
    delta_path: Path
    num_samples: int
    source_version: str
    trained_at: datetime
    improvement: float  # accuracy gain on the learner's own held-out data (fraction, e.g. 0.04)


@dataclass(frozen=True)
class PrivacySettings:
    """DP-FedAvg knobs; see :mod:`aivo_fl.ml.privacy` for the mechanism.

    ``expected_learners`` is McMahan's fixed denominator (expected total weight of a round). Set it
    to the planned cohort size for the strict add/remove-one analysis. If ``None`` we use the
    number of learners who trained inside the staleness window (known before any delta content is
    read); that treats the cohort size as public, which is the usual practical compromise.
    """

    enabled: bool
    noise_multiplier: float
    clip_norm: float
    delta: float = DEFAULT_DELTA
    epsilon_budget: float | None = None  # global: refuse the round past it
    learner_epsilon_budget: float | None = None  # per learner: exclude them past it
    sample_cap: int = DEFAULT_SAMPLE_CAP
    expected_learners: int | None = None


@dataclass(frozen=True)
class RoundOptions:
    strategy: str = "fedavg"
    min_learners: int = 3
    max_stale_days: int = 7
    learning_rate: float = DEFAULT_LEARNING_RATE
    dry_run: bool = False
    max_delta_norm: float = DEFAULT_MAX_DELTA_NORM
    trim_fraction: float = TRIM_FRACTION
    block_bytes: int = DEFAULT_BLOCK_BYTES


@dataclass
class Contribution:
    learner_id: str
    weight: float  # coefficient of this learner's (clipped) delta in the aggregate; 0 if excluded
    update_norm: float | None  # L2 norm before clipping; None if the file was never read
    clipped: bool
    excluded_reason: str | None
    versions_behind: int = 0


@dataclass(frozen=True)
class RoundResult:
    base_version: str
    strategy: str
    candidate_heads: Delta | None  # float32, same names/shapes as the base; None on a dry run
    aggregate_norm: float | None
    contributions: list[Contribution]
    trained_in_window: int
    denominator: float
    noise_std: float | None  # std of the noise on the released average (None without DP)
    epsilon_round: float | None  # None without DP: no guarantee at all
    epsilon_total: float | None
    learner_epsilons: dict[str, float] = field(default_factory=dict)
    privacy_event: PrivacyEvent | None = None  # persist this; None when nothing was released
    privacy_warning: str | None = None
    dry_run: bool = False

    @property
    def included(self) -> list[Contribution]:
        return [c for c in self.contributions if c.excluded_reason is None]

    @property
    def excluded(self) -> list[Contribution]:
        return [c for c in self.contributions if c.excluded_reason is not None]


class NoEligibleLearners(Exception):
    def __init__(
        self, eligible: int, trained_in_window: int, min_learners: int, window_days: int, already_aggregated: int = 0
    ) -> None:
        used = f", {already_aggregated} of them already aggregated" if already_aggregated else ""
        super().__init__(
            f"No eligible learners: {eligible} usable update(s) from {trained_in_window} learner(s) who "
            f"trained in the last {window_days} days{used}; at least {min_learners} (min_learners) are needed"
        )
        self.eligible = eligible
        self.trained_in_window = trained_in_window
        self.min_learners = min_learners


def next_version(version: str, bump: str = "minor") -> str:
    """Semver bump; every aggregated main version is a minor bump (1.0.0 -> 1.1.0)."""
    match = _SEMVER.match(version)
    if not match:
        raise ValueError(f"not a MAJOR.MINOR.PATCH version: {version!r}")
    major, minor, patch = (int(p) for p in match.groups())
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    if bump == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ValueError(f"bump must be major, minor or patch, got {bump!r}")


def staleness_factor(versions_behind: int) -> float:
    """FedBuff-style (Nguyen et al. 2022) polynomial discount 1 / sqrt(1 + versions behind)."""
    return 1.0 / math.sqrt(1.0 + versions_behind)


def _learner_history(
    learner_rounds_so_far: Mapping[str, Sequence[PrivacyEvent] | int], learner_id: str, current: PrivacyEvent
) -> list[PrivacyEvent]:
    prior = learner_rounds_so_far.get(learner_id, [])
    if isinstance(prior, int):  # only a count is known: assume those rounds used today's settings
        return [current] * prior
    return list(prior)


@dataclass
class _Candidate:
    update: LearnerUpdate
    contribution: Contribution
    factor: float  # staleness discount


def _screen(
    updates: Sequence[LearnerUpdate],
    base_version: str,
    version_history: Sequence[str],
    options: RoundOptions,
    now: datetime,
) -> tuple[list[Contribution], list[_Candidate], int]:
    """Metadata checks (no file I/O): duplicates, staleness, version lineage, sample counts."""
    if base_version not in version_history:
        raise ValueError(f"base version {base_version!r} is not in the version history")
    position = {v: i for i, v in enumerate(version_history)}
    contributions: list[Contribution] = []
    candidates: list[_Candidate] = []
    seen: set[str] = set()
    in_window = 0
    for update in updates:
        c = Contribution(update.learner_id, 0.0, None, False, None)
        contributions.append(c)
        age = now - update.trained_at
        if update.learner_id in seen:
            c.excluded_reason = "duplicate update in this round"
            continue
        seen.add(update.learner_id)
        if age > timedelta(days=options.max_stale_days):
            c.excluded_reason = f"stale: trained {age.days} days ago"
            continue
        in_window += 1
        if update.source_version not in position:
            c.excluded_reason = f"unknown source version {update.source_version}"
            continue
        behind = position[base_version] - position[update.source_version]
        if behind < 0:
            c.excluded_reason = f"source version {update.source_version} is newer than base {base_version}"
            continue
        if update.num_samples <= 0:
            c.excluded_reason = "no training samples"
            continue
        c.versions_behind = behind
        candidates.append(_Candidate(update, c, staleness_factor(behind)))
    return contributions, candidates, in_window


def aggregate_round(
    base_heads: Mapping[str, np.ndarray],
    base_version: str,
    version_history: Sequence[str],
    updates: Iterable[LearnerUpdate],
    options: RoundOptions,
    privacy: PrivacySettings,
    privacy_events_so_far: Sequence[PrivacyEvent],
    learner_rounds_so_far: Mapping[str, Sequence[PrivacyEvent] | int],
    now: datetime,
    rng: np.random.Generator,
    *,
    learners_root: Path,
) -> RoundResult:
    """Screen, validate and aggregate the learners' deltas into candidate heads.

    Every delta file must lie inside ``learners_root`` (the learners' model store) and match its
    folder's manifest; see :func:`aivo_fl.ml.deltas.load_delta`.

    Raises ``ValueError`` (bad strategy/options), ``PrivacyBudgetExceeded`` (global budget) and
    ``NoEligibleLearners`` (fewer than ``min_learners`` usable updates). Bad files only exclude
    their learner; the round goes on.
    """
    check_strategy(options.strategy)
    if privacy.enabled and options.strategy in ROBUST_STRATEGIES:
        raise ValueError(
            f"strategy {options.strategy!r} cannot be combined with differential privacy: DP-FedAvg's "
            f"sensitivity bound covers clipped weighted sums only; use one of {', '.join(SUM_STRATEGIES)}"
        )
    if privacy.enabled and not (privacy.clip_norm > 0 and privacy.sample_cap > 0):
        raise ValueError("clip_norm and sample_cap must be > 0 when differential privacy is enabled")
    shapes = shapes_of(base_heads)
    event = PrivacyEvent(privacy.noise_multiplier) if privacy.enabled else None  # we never sample learners
    if event is not None:
        check_global_budget(privacy_events_so_far, event, privacy.delta, privacy.epsilon_budget)

    contributions, candidates, in_window = _screen(list(updates), base_version, version_history, options, now)

    learner_epsilons: dict[str, float] = {}
    if event is not None:
        kept = []
        for cand in candidates:
            history = _learner_history(learner_rounds_so_far, cand.update.learner_id, event)
            after = epsilon_for_events([*history, event], privacy.delta)
            budget = privacy.learner_epsilon_budget
            if budget is not None and after > budget:
                cand.contribution.excluded_reason = BUDGET_SPENT
                learner_epsilons[cand.update.learner_id] = epsilon_for_events(history, privacy.delta)
            else:
                kept.append(cand)
                learner_epsilons[cand.update.learner_id] = after
        candidates = kept

    denominator = float(privacy.expected_learners or max(in_window, 1)) if privacy.enabled else 1.0
    aggregate, used = _aggregate(candidates, shapes, options, privacy, denominator, rng, learners_root)

    if len(used) < options.min_learners:
        raise NoEligibleLearners(len(used), in_window, options.min_learners, options.max_stale_days)

    # Learners whose file was rejected never contributed: their ledger stays where it was.
    if event is not None:
        for cand in candidates:
            if cand.contribution.excluded_reason is not None:
                history = _learner_history(learner_rounds_so_far, cand.update.learner_id, event)
                learner_epsilons[cand.update.learner_id] = epsilon_for_events(history, privacy.delta)

    candidate_heads = None
    aggregate_norm = None
    if aggregate is not None:
        aggregate_norm = delta_norm(aggregate)
        candidate_heads = {
            name: (np.asarray(base_heads[name], np.float64) + options.learning_rate * aggregate[name]).astype(
                np.float32
            )
            for name in shapes
        }

    released = event is not None and not options.dry_run
    eps_round = eps_total = None
    if event is not None:
        eps_round = epsilon_for_events([event], privacy.delta)
        eps_total = epsilon_for_events([*privacy_events_so_far, event], privacy.delta)
    return RoundResult(
        base_version=base_version,
        strategy=options.strategy,
        candidate_heads=candidate_heads,
        aggregate_norm=aggregate_norm,
        contributions=contributions,
        trained_in_window=in_window,
        denominator=denominator,
        noise_std=noise_std(privacy.noise_multiplier, privacy.clip_norm) / denominator if event else None,
        epsilon_round=eps_round,
        epsilon_total=eps_total,
        learner_epsilons=learner_epsilons,
        privacy_event=event if released else None,
        privacy_warning=epsilon_warning(eps_total, privacy.delta) if eps_total is not None else None,
        dry_run=options.dry_run,
    )


def _aggregate(
    candidates: list[_Candidate],
    shapes: Mapping[str, tuple[int, ...]],
    options: RoundOptions,
    privacy: PrivacySettings,
    denominator: float,
    rng: np.random.Generator,
    learners_root: Path,
) -> tuple[Delta | None, list[_Candidate]]:
    """Validate every file (one at a time) and fold it into the strategy; returns (aggregate, used)."""
    robust = options.strategy in ROBUST_STRATEGIES
    dp_sum = DpSum(shapes, privacy.clip_norm, privacy.noise_multiplier, denominator) if privacy.enabled else None
    plain_sum = WeightedSum(shapes)
    used: list[_Candidate] = []
    weights: list[float] = []
    for cand in candidates:
        u, c = cand.update, cand.contribution
        try:
            delta, c.update_norm = load_delta(u.delta_path, learners_root, shapes, options.max_delta_norm)
        except DeltaRejected as exc:
            c.excluded_reason = exc.reason
            continue
        used.append(cand)
        if robust:
            weights.append(cand.factor)
        elif dp_sum is not None:
            w = dp_weight(u.num_samples, privacy.sample_cap, cand.factor * _dp_extra(options.strategy, u))
            _, c.clipped = dp_sum.add(delta, w, c.update_norm)
            weights.append(w)
        else:
            w = raw_weight(options.strategy, u.num_samples, u.improvement) * cand.factor
            if not options.dry_run:
                plain_sum.add(delta, w)
            weights.append(w)
        del delta  # only one learner's delta is alive at a time

    if len(used) < options.min_learners:
        return None, used
    if robust:
        for cand, w in zip(used, weights, strict=True):
            cand.contribution.weight = w / len(used)
    elif dp_sum is not None:
        for cand, w in zip(used, weights, strict=True):
            cand.contribution.weight = w / denominator
    else:
        total = sum(weights)
        for cand, w in zip(used, weights, strict=True):
            cand.contribution.weight = w / total
    if options.dry_run:
        return None, used
    if robust:
        paths = [c.update.delta_path for c in used]
        block_elems = max(1, options.block_bytes // (8 * len(paths)))
        blocks = iter_stacked_blocks(paths, learners_root, shapes, plan_blocks(shapes, block_elems), scales=weights)
        if options.strategy == "median":
            return median(blocks, shapes), used
        return trimmed_mean(blocks, shapes, options.trim_fraction), used
    if dp_sum is not None:
        return dp_sum.release(rng), used
    return plain_sum.mean(), used


def _dp_extra(strategy: str, update: LearnerUpdate) -> float:
    """Extra weight factor in [0, 1] under DP (capped weights keep the sensitivity at clip_norm)."""
    return improvement_factor(update.improvement) if strategy == "weighted" else 1.0
