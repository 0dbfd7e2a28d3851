"""The privacy figures of `aivo-fl stats`, recomposed from the rounds the registry recorded.

Only recorded rounds count: each round's own noise multiplier, clip norm, sample rate,
population, denominator and delta (``history --json`` shows them under ``privacy``), so
``stats`` can be re-derived from ``history`` alone and never mixes in today's settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aivo_fl.ml.privacy.ledger import (
    LedgerTotal,
    RoundPrivacy,
    compose_rounds,
    learner_totals,
    ledger_delta,
    worst_learner,
)
from aivo_fl.ml.privacy.mechanism import epsilon_warning, rdp_epsilon_for_events
from aivo_fl.registry import ModelRegistry

ACCOUNTANT = (
    "dp-accounting PLD: PoissonSampled(sampleRate, Gaussian(z)) per recorded round, z the update query, adaptive "
    "clipping's count and the private gate's query composed"
)
# The one headline figure, named the same on every surface (stats, Dagster metadata and checks, reports).
HEADLINE = "worst-case learner epsilon"
HEADLINE_MEANING = (
    "every recorded round composed: the epsilon of a learner eligible in all of them, which bounds every learner"
)


def recorded_rounds(registry: ModelRegistry) -> list[RoundPrivacy]:
    """Every recorded round, oldest first (promoted or rejected: both released information)."""
    return [RoundPrivacy.from_json(r["updateId"], r["privacy"]) for r in registry.round_privacy_records()]


def learner_ledgers(
    registry: ModelRegistry, rounds: Sequence[RoundPrivacy], learner_ids: Iterable[str] | None = None
) -> dict[str, list[RoundPrivacy]]:
    """For each learner, the recorded rounds in which they could have been sampled."""
    by_id = {r.round_id: r for r in rounds}
    charged = registry.learner_charged_rounds(learner_ids)
    return {learner: [by_id[i] for i in ids if i in by_id] for learner, ids in charged.items()}


def ledger_figures(
    rounds: Sequence[RoundPrivacy], ledgers: Mapping[str, Sequence[RoundPrivacy]], fallback_delta: float
) -> dict[str, Any]:
    """The figures that depend on the recorded rounds only (what ``history --json`` re-derives)."""
    delta = ledger_delta(rounds, fallback_delta)
    total = compose_rounds(rounds, delta)
    _, worst = worst_learner(learner_totals(ledgers, delta))
    last = rounds[-1] if rounds else None
    events = [r.event() for r in rounds]
    return {
        "worstCaseLearnerEpsilon": total.epsilon,
        # The looser RDP figure for the same rounds: a cross-check of the PLD accountant.
        "rdpCrossCheck": None if total.epsilon is None else rdp_epsilon_for_events([e for e in events if e], delta),
        "noGuarantee": total.no_guarantee_reason,
        "delta": delta,
        "rounds": total.rounds,
        "noisedRounds": total.noised_rounds,
        # What the latest round really used (not today's settings).
        "noiseMultiplier": last.noise_multiplier if last else None,
        "clipNorm": last.clip_norm if last else None,
        "sampleRate": last.sample_rate if last else None,
        # Enforcement only (PRIVACY_LEARNER_EPSILON_BUDGET): the largest epsilon a learner in the registry
        # has really spent; no learner is named.
        "largestLearnerEpsilon": worst.epsilon if worst else 0.0,
    }


def privacy_summary(
    registry: ModelRegistry,
    *,
    enabled: bool,
    delta: float,
    epsilon_budget: float | None,
    learner_epsilon_budget: float | None,
) -> dict[str, Any]:
    """The ledger's figures plus today's settings for the next round (labelled as such).

    ``delta`` is only the fallback before any round recorded one.
    """
    rounds = recorded_rounds(registry)
    figures = ledger_figures(rounds, learner_ledgers(registry, rounds), delta)
    budget = epsilon_budget
    headline = figures["worstCaseLearnerEpsilon"]
    total = LedgerTotal(headline, figures["delta"], figures["rounds"], figures["noisedRounds"])
    return {
        "enabled": enabled,
        **figures,
        "epsilonBudget": budget,
        "overBudget": total.over(budget),
        "learnerEpsilonBudget": learner_epsilon_budget,
        "accountant": ACCOUNTANT,
        "headline": f"{HEADLINE}: {HEADLINE_MEANING}",
        "warning": summary_warning(figures, budget),
    }


def summary_warning(figures: Mapping[str, Any], budget: float | None = None) -> str | None:
    """Why the privacy figures do not mean what an operator hopes: no guarantee, an epsilon beyond
    the meaningful range, or no budget that would ever stop the rounds."""
    if figures["noGuarantee"]:
        return f"No privacy guarantee: {figures['noGuarantee']}."
    if not figures["rounds"]:
        return None
    too_large = epsilon_warning(figures["worstCaseLearnerEpsilon"], figures["delta"])
    if too_large:
        return too_large
    if budget is None:
        return (
            f"No budget set: PRIVACY_EPSILON_BUDGET is unset, so nothing stops the {HEADLINE} from growing with "
            "every round; set it (PRIVACY_PRESET=user-level sets 2)."
        )
    return None
