"""Privacy accounting of a round, in one place: the global budget, each learner's own budget, the
fixed denominator, and the epsilons to report. The mechanism itself is
:class:`aivo_fl.ml.aggregation.DpClipped`; the accountant is :mod:`aivo_fl.ml.privacy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aivo_fl.ml.privacy import (
    PrivacyEvent,
    check_global_budget,
    epsilon_for_events,
    epsilon_warning,
)
from aivo_fl.ml.round.gather import Gathered, Update
from aivo_fl.ml.round.options import PrivacySettings


@dataclass(frozen=True)
class PrivacyHistory:
    """What was released before this round (from the registry, or kept in memory by a simulation)."""

    events: Sequence[PrivacyEvent] = ()
    # per learner: the rounds it contributed to, or only their count (then assumed at today's settings)
    learner_rounds: Mapping[str, Sequence[PrivacyEvent] | int] = field(default_factory=dict)

    def of(self, learner_id: str, current: PrivacyEvent) -> list[PrivacyEvent]:
        prior = self.learner_rounds.get(learner_id, [])
        return [current] * prior if isinstance(prior, int) else list(prior)


@dataclass(frozen=True)
class PrivacyAccount:
    event: PrivacyEvent | None  # what this round releases; None without DP
    included: tuple[Update, ...]  # the usable updates whose learners still have budget
    out_of_budget: tuple[Update, ...]
    denominator: float  # McMahan's fixed denominator (1.0 without DP)
    epsilon_round: float | None  # None without DP: no guarantee at all
    epsilon_total: float | None
    learner_epsilons: dict[str, float]  # each usable learner's own epsilon after the round
    warning: str | None


def account_round(privacy: PrivacySettings, history: PrivacyHistory, gathered: Gathered) -> PrivacyAccount:
    """Raises ``PrivacyBudgetExceeded`` if the round would take the total past the global budget."""
    if not privacy.enabled:
        return PrivacyAccount(None, gathered.usable, (), 1.0, None, None, {}, None)
    event = PrivacyEvent(privacy.noise_multiplier)  # learners are not sampled: sampling rate 1
    _, eps_round, eps_total = check_global_budget(history.events, event, privacy.delta, privacy.epsilon_budget)
    included: list[Update] = []
    out: list[Update] = []
    epsilons: dict[str, float] = {}
    for update in gathered.usable:
        before = history.of(update.learner_id, event)
        after = epsilon_for_events([*before, event], privacy.delta)
        budget = privacy.learner_epsilon_budget
        if budget is not None and after > budget:
            out.append(update)
            epsilons[update.learner_id] = epsilon_for_events(before, privacy.delta)
        else:
            included.append(update)
            epsilons[update.learner_id] = after
    denominator = float(privacy.expected_learners or max(gathered.trained_in_window, 1))
    return PrivacyAccount(
        event,
        tuple(included),
        tuple(out),
        denominator,
        eps_round,
        eps_total,
        epsilons,
        epsilon_warning(eps_total, privacy.delta),
    )
