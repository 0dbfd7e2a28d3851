"""Privacy accounting of a round, in one place: who may be drawn, the draw (Poisson sampling), the
fixed denominator, both budgets, adaptive clipping's estimate, and the record the round persists.
The mechanism itself is :class:`aivo_fl.ml.aggregation.DpClipped`; the ledger is
:mod:`aivo_fl.ml.privacy.ledger`.

Order matters: the round's worst-case charge is known from the settings and the population size
alone, so both budgets are checked BEFORE any learner is drawn or any noise is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from aivo_fl.ml.privacy.adaptive_clipping import next_clip_norm, noised_fraction_below
from aivo_fl.ml.privacy.ledger import LedgerTotal, RoundPrivacy, check_budget, compose_rounds, planned_round
from aivo_fl.ml.privacy.mechanism import PrivacyEvent, epsilon_warning
from aivo_fl.ml.privacy.sampling import poisson_sample
from aivo_fl.ml.round.gather import Update
from aivo_fl.ml.round.options import PrivacySettings

THIS_ROUND = "this round"
NOT_SAMPLED = "not sampled this round"


@dataclass(frozen=True)
class PrivacyHistory:
    """The rounds recorded before this one (from the registry, or kept in memory by a simulation)."""

    rounds: Sequence[RoundPrivacy] = ()
    # per learner: the recorded rounds whose population they were in (could have been sampled)
    learner_rounds: Mapping[str, Sequence[RoundPrivacy]] = field(default_factory=dict)

    def of(self, learner_id: str) -> Sequence[RoundPrivacy]:
        return self.learner_rounds.get(learner_id, ())

    def clip_norm(self, privacy: PrivacySettings) -> float:
        """This round's clip norm: the fixed one, or (adaptive) the last round's moved by its estimate."""
        if privacy.clip_target_quantile is None:
            return privacy.clip_norm
        for r in reversed(self.rounds):
            if r.clip_quantile_estimate is not None and r.clip_norm:
                return next_clip_norm(r.clip_norm, r.clip_quantile_estimate, privacy.clip_target_quantile)
        return privacy.clip_norm

    def after(self, record: RoundPrivacy, charged: Iterable[str]) -> PrivacyHistory:
        """The history once ``record`` is recorded and ``charged`` learners paid for it (simulations)."""
        record = replace(record, round_id=f"round-{len(self.rounds) + 1}")  # ids key the per-learner cache
        learners = dict(self.learner_rounds)
        for learner in charged:
            learners[learner] = [*learners.get(learner, ()), record]
        return PrivacyHistory([*self.rounds, record], learners)


@dataclass(frozen=True)
class PrivacyAccount:
    record: RoundPrivacy  # what the round uses: persist it with the round, DP or not
    included: tuple[Update, ...]  # drawn into the round (every eligible one at sample rate 1)
    not_sampled: tuple[Update, ...]  # eligible, not drawn: charged all the same
    out_of_budget: tuple[Update, ...]  # left out before the draw: not charged
    epsilon_round: float | None  # None: no guarantee (released without noise)
    epsilon_total: float | None  # the worst-case learner (eligible in every round) after this round
    learner_epsilons: dict[str, float | None]
    warning: str | None
    refused: tuple[Update, ...] = ()  # drawn, then their file was refused (sampling): charged, not included

    @property
    def event(self) -> PrivacyEvent | None:
        return self.record.event()

    @property
    def denominator(self) -> float:
        """McMahan's fixed denominator: the expected cohort (1.0 without DP)."""
        return self.record.denominator or 1.0

    @property
    def charged(self) -> tuple[Update, ...]:
        return self.included + self.not_sampled + self.refused


@dataclass(frozen=True)
class Draw:
    """Who may be drawn and who was, decided before any noise: budgets already checked."""

    planned: RoundPrivacy
    population: list[Update]
    drawn: list[Update]
    out_of_budget: list[Update]
    this_round: LedgerTotal
    after: LedgerTotal


class PrivacyPlanOutOfReach(ValueError):
    """The planner finds no useful noise and sample rate for the target at this population."""


def planned_settings(privacy: PrivacySettings, population: int) -> PrivacySettings:
    """``privacy`` with the planner's noise multiplier and sample rate for its target epsilon at
    ``population`` (unchanged without a target, or with DP off). Raises PrivacyPlanOutOfReach."""
    if privacy.target_epsilon is None or not privacy.enabled:
        return privacy
    from aivo_fl.ml.privacy.planner import plan  # the accountant's heavy import, only when planning

    found = plan(
        privacy.target_epsilon,
        privacy.target_rounds,
        max(population, 1),
        privacy.delta,
        adaptive=privacy.clip_target_quantile is not None,
    )
    if found.recommended is None:
        raise PrivacyPlanOutOfReach(
            f"{found.line()}; for a small school use PRIVACY_PRESET=user-level-epsilon-8-small-schools"
        )
    chosen = found.recommended
    return replace(privacy, noise_multiplier=chosen.noise_multiplier, sample_rate=chosen.sample_rate)


def draw_round(
    privacy: PrivacySettings, history: PrivacyHistory, eligible: Sequence[Update], rng: np.random.Generator
) -> Draw:
    """Budgets first (raising ``PrivacyBudgetExceeded`` before anything is drawn), then the draw."""
    population, out, planned = population_of(privacy, history, eligible)
    _, this_round, after = check_budget(history.rounds, planned, privacy.epsilon_budget)
    drawn = poisson_sample(population, privacy.sample_rate, rng)
    return Draw(planned, population, drawn, out, this_round, after)


def settle(
    draw: Draw,
    included: Sequence[Update],
    history: PrivacyHistory,
    privacy: PrivacySettings,
    rng: np.random.Generator,
    *,
    release: bool,
) -> PrivacyAccount:
    """The account once the drawn updates were read: ``included`` are the drawn ones whose delta is
    usable (norms known). With ``release`` (not a dry run) adaptive clipping releases its noised count."""
    planned, record = draw.planned, draw.planned
    if release and planned.dp_enabled and planned.target_quantile is not None:
        estimate = noised_fraction_below(
            [u.norm for u in included], planned.clip_norm or 0.0, planned.denominator or 1.0, rng
        )
        record = replace(planned, clip_quantile_estimate=estimate)
    delta = planned.delta or privacy.delta
    drawn_ids = {u.learner_id for u in draw.drawn}
    included_ids = {u.learner_id for u in included}
    return PrivacyAccount(
        record,
        tuple(included),
        tuple(u for u in draw.population if u.learner_id not in drawn_ids),
        tuple(draw.out_of_budget),
        draw.this_round.epsilon,
        draw.after.epsilon,
        _learner_epsilons(history, planned, draw.population, draw.out_of_budget, delta),
        _warning(draw.after.epsilon, draw.after.no_guarantee_reason, delta),
        tuple(u for u in draw.drawn if u.learner_id not in included_ids),
    )


def account_round(
    privacy: PrivacySettings,
    history: PrivacyHistory,
    usable: Sequence[Update],
    rng: np.random.Generator,
    *,
    release: bool,
) -> PrivacyAccount:
    """The whole account of updates already read (``usable``: norms known): draw, then settle."""
    draw = draw_round(privacy, history, usable, rng)
    return settle(draw, draw.drawn, history, privacy, rng, release=release)


def _learner_epsilons(
    history: PrivacyHistory,
    planned: RoundPrivacy,
    population: Sequence[Update],
    out: Sequence[Update],
    delta: float,
) -> dict[str, float | None]:
    """Each learner's epsilon after this round (``out``: without it), composed once per distinct history."""
    with_round = _Composer(history, delta, (planned,))
    without = _Composer(history, delta, ())
    epsilons = {u.learner_id: with_round.total(u.learner_id).epsilon for u in population}
    epsilons |= {u.learner_id: without.total(u.learner_id).epsilon for u in out}
    return epsilons


class _Composer:
    """A learner's recorded rounds plus ``extra``, composed once per distinct history (learners of
    one population share a handful of histories: 10,000 learners, a few accountant calls)."""

    def __init__(self, history: PrivacyHistory, delta: float, extra: tuple[RoundPrivacy, ...]) -> None:
        self._history, self._delta, self._extra = history, delta, extra
        self._by_key: dict[tuple[str, ...], LedgerTotal] = {}

    def total(self, learner_id: str) -> LedgerTotal:
        rounds = self._history.of(learner_id)
        key = tuple(r.round_id for r in rounds)
        found = self._by_key.get(key)
        if found is None:
            found = self._by_key[key] = compose_rounds([*rounds, *self._extra], self._delta)
        return found


def _plan(privacy: PrivacySettings, clip_norm: float, population: int) -> RoundPrivacy:
    return planned_round(
        THIS_ROUND,
        dp_enabled=privacy.enabled,
        noise_multiplier=privacy.noise_multiplier,
        clip_norm=clip_norm,
        sample_rate=privacy.sample_rate,
        population=population,
        delta=privacy.delta,
        target_quantile=privacy.clip_target_quantile,
    )


def population_of(
    privacy: PrivacySettings, history: PrivacyHistory, eligible: Sequence[Update]
) -> tuple[list[Update], list[Update], RoundPrivacy]:
    """Who may be drawn: every eligible update whose learner has room in their own budget.

    The charge depends a little on the population's size (adaptive clipping's count noise scales
    with the expected cohort), so the check repeats until nobody else drops out.
    """
    clip = history.clip_norm(privacy)
    population, out = list(eligible), []
    while True:
        planned = _plan(privacy, clip, len(population))
        budget = privacy.learner_epsilon_budget
        if budget is None:
            return population, out, planned
        composer = _Composer(history, privacy.delta, (planned,))
        over = {u.learner_id for u in population if composer.total(u.learner_id).over(budget)}
        if not over:
            return population, out, planned
        out += [u for u in population if u.learner_id in over]
        population = [u for u in population if u.learner_id not in over]


def _warning(epsilon: float | None, reason: str | None, delta: float) -> str | None:
    if epsilon is None:
        return f"No privacy guarantee: {reason}."
    return epsilon_warning(epsilon, delta)
