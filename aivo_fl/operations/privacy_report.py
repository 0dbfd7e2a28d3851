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
from aivo_fl.ml.privacy.mechanism import epsilon_warning
from aivo_fl.registry import ModelRegistry

ACCOUNTANT = "dp-accounting RDP: PoissonSampled(sampleRate, Gaussian(noise multiplier)) per recorded round"


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
    worst_id, worst = worst_learner(learner_totals(ledgers, delta))
    last = rounds[-1] if rounds else None
    return {
        "epsilonSpent": total.epsilon,
        "noGuarantee": total.no_guarantee_reason,
        "delta": delta,
        "rounds": total.rounds,
        "noisedRounds": total.noised_rounds,
        # What the latest round really used (not today's settings).
        "noiseMultiplier": last.noise_multiplier if last else None,
        "clipNorm": last.clip_norm if last else None,
        "sampleRate": last.sample_rate if last else None,
        "maxLearnerEpsilon": worst.epsilon if worst else 0.0,
        "maxLearnerEpsilonLearner": worst_id,
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
    total = LedgerTotal(figures["epsilonSpent"], figures["delta"], figures["rounds"], figures["noisedRounds"])
    return {
        "enabled": enabled,
        **figures,
        "epsilonBudget": budget,
        "overBudget": total.over(budget),
        "learnerEpsilonBudget": learner_epsilon_budget,
        "accountant": ACCOUNTANT,
        "warning": summary_warning(figures),
    }


def summary_warning(figures: Mapping[str, Any]) -> str | None:
    if figures["noGuarantee"]:
        return f"No privacy guarantee: {figures['noGuarantee']}."
    return epsilon_warning(figures["epsilonSpent"], figures["delta"]) if figures["rounds"] else None
