"""A round's privacy accounting, in one place: who may be drawn, the draw, the fixed denominator,
both budgets, and the record the round persists. Independent of how the round is structured: it
takes the round's candidates (anything with a learner id) and hands back who was drawn.

Order matters: the round's worst-case charge is known from the settings and the population size
alone, so both budgets are checked BEFORE any learner is drawn or any noise is drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

import numpy as np

from aivo_fl.ml.adaptive_clipping import next_clip_norm, noised_fraction_below
from aivo_fl.ml.learner_sampling import poisson_sample
from aivo_fl.ml.privacy import PrivacyEvent, epsilon_warning
from aivo_fl.ml.privacy_ledger import RoundPrivacy, check_budget, compose_rounds, planned_round

T = TypeVar("T")
THIS_ROUND = "this round"
NOT_SAMPLED = "not sampled this round"


class DpSettings(Protocol):
    enabled: bool
    noise_multiplier: float
    clip_norm: float  # the fixed clip norm, or adaptive clipping's starting value
    delta: float
    epsilon_budget: float | None
    learner_epsilon_budget: float | None
    sample_rate: float
    clip_target_quantile: float | None  # None: fixed clip norm


@dataclass(frozen=True)
class PrivacyHistory:
    """The rounds recorded before this one (from the registry, or kept in memory by a simulation)."""

    rounds: Sequence[RoundPrivacy] = ()
    # per learner: the recorded rounds whose population they were in (could have been sampled)
    learner_rounds: Mapping[str, Sequence[RoundPrivacy]] = field(default_factory=dict)

    def of(self, learner_id: str) -> Sequence[RoundPrivacy]:
        return self.learner_rounds.get(learner_id, ())

    def clip_norm(self, privacy: DpSettings) -> float:
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
class RoundDraw(Generic[T]):
    record: RoundPrivacy  # what the round uses: persist it with the round, DP or not
    drawn: list[T]  # into the round (every eligible one at sample rate 1)
    not_sampled: list[T]  # eligible, not drawn: charged all the same
    out_of_budget: list[T]  # left out before the draw: not charged
    epsilon_round: float | None  # None: no guarantee (released without noise)
    epsilon_total: float | None  # the worst-case learner (eligible in every round) after this round
    learner_epsilons: dict[str, float | None]
    warning: str | None

    @property
    def event(self) -> PrivacyEvent | None:
        return self.record.event()

    @property
    def denominator(self) -> float:
        return self.record.denominator or 1.0

    def with_clip_estimate(self, norms: Sequence[float], rng: np.random.Generator) -> RoundDraw[T]:
        """Adaptive clipping: release the noised fraction of drawn norms under the clip (moves the next clip)."""
        r = self.record
        if r.target_quantile is None or not r.dp_enabled:
            return self
        estimate = noised_fraction_below(norms, r.clip_norm or 0.0, self.denominator, rng)
        return replace(self, record=replace(r, clip_quantile_estimate=estimate))


def draw_round(
    privacy: DpSettings,
    history: PrivacyHistory,
    candidates: Sequence[T],
    learner_of: Callable[[T], str],
    rng: np.random.Generator,
) -> RoundDraw[T]:
    """Budgets first (raising ``PrivacyBudgetExceeded`` before anything is drawn), then the draw."""
    population, out, planned = _population(privacy, history, candidates, learner_of)
    _, this_round, after = check_budget(history.rounds, planned, privacy.epsilon_budget)
    drawn = poisson_sample(population, privacy.sample_rate, rng)
    drawn_ids = {learner_of(c) for c in drawn}
    delta = planned.delta or privacy.delta
    epsilons = {learner_of(c): compose_rounds([*history.of(learner_of(c)), planned], delta).epsilon for c in population}
    epsilons |= {learner_of(c): compose_rounds(history.of(learner_of(c)), delta).epsilon for c in out}
    return RoundDraw(
        planned,
        drawn,
        [c for c in population if learner_of(c) not in drawn_ids],
        out,
        this_round.epsilon,
        after.epsilon,
        epsilons,
        _warning(after.epsilon, after.no_guarantee_reason, delta),
    )


def _plan(privacy: DpSettings, clip_norm: float, population: int) -> RoundPrivacy:
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


def _population(
    privacy: DpSettings, history: PrivacyHistory, candidates: Sequence[T], learner_of: Callable[[T], str]
) -> tuple[list[T], list[T], RoundPrivacy]:
    """Who may be drawn: every candidate with room in their own budget for the round's charge.

    The charge depends a little on the population's size (adaptive clipping's count noise scales
    with the expected cohort), so the check repeats until nobody else drops out.
    """
    clip = history.clip_norm(privacy)
    population, out = list(candidates), []
    while True:
        planned = _plan(privacy, clip, len(population))
        budget = privacy.learner_epsilon_budget
        if budget is None:
            return population, out, planned
        over = {
            learner_of(c)
            for c in population
            if compose_rounds([*history.of(learner_of(c)), planned], privacy.delta).over(budget)
        }
        if not over:
            return population, out, planned
        out += [c for c in population if learner_of(c) in over]
        population = [c for c in population if learner_of(c) not in over]


def _warning(epsilon: float | None, reason: str | None, delta: float) -> str | None:
    if epsilon is None:
        return f"No privacy guarantee: {reason}."
    return epsilon_warning(epsilon, delta)
