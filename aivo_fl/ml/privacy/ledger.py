"""The privacy ledger: epsilon recomposed from what each recorded round really used.

Every round records its privacy parameters (:class:`RoundPrivacy`); totals, per-learner figures
and budget checks are always recomposed from those records, never from today's settings, so a
report explains its own number after any change of settings.

* A round released without noise (DP off, or a zero noise multiplier) gives **no guarantee**: the
  total becomes ``None`` with a reason instead of silently leaving the round out.
* A learner is charged for every round in which they *could* have been sampled (they were in the
  round's eligible population), not only the rounds they were drawn for: amplification by
  sampling is a statement about the draw, so it only holds if the ledger covers every draw.
* The worst-case learner is one who was eligible in every round, so the global total is the
  composition of all recorded rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aivo_fl.ml.privacy.adaptive_clipping import combined_noise_multiplier, quantile_noise_multiplier
from aivo_fl.ml.privacy.gate_query import gate_noise_multiplier
from aivo_fl.ml.privacy.mechanism import (
    DEFAULT_DELTA,
    PrivacyBudgetExceeded,
    PrivacyEvent,
    epsilon_for_events,
)
from aivo_fl.ml.privacy.sampling import expected_cohort

NO_NOISE = "released without noise (differential privacy off): no guarantee"


@dataclass(frozen=True)
class RoundPrivacy:
    """What one round used, as recorded with it (the accountant's only input)."""

    round_id: str
    dp_enabled: bool
    noise_multiplier: float | None = None
    clip_norm: float | None = None  # the one really used (the adaptive one under CLIP_NORM=auto)
    sample_rate: float = 1.0
    population: int | None = None  # learners eligible to be sampled
    denominator: float | None = None  # sample_rate x population
    delta: float | None = None
    target_quantile: float | None = None  # None: fixed clip norm
    quantile_noise_multiplier: float | None = None  # adaptive clipping's count query
    clip_quantile_estimate: float | None = None  # its released estimate: moves the next clip norm
    gate_noise_multiplier: float | None = None  # the private gate's query (None: a round before it)

    def event(self) -> PrivacyEvent | None:
        """The accountant's event, or None when the round gives no guarantee."""
        if not self.dp_enabled or not self.noise_multiplier:
            return None
        z = combined_noise_multiplier(self.noise_multiplier, self.quantile_noise_multiplier, self.gate_noise_multiplier)
        return PrivacyEvent(z, self.sample_rate) if z > 0 else None

    @classmethod
    def from_json(cls, round_id: str, raw: Mapping[str, Any]) -> RoundPrivacy:
        """From a round's recorded ``privacy`` object (the registry's, shown by ``history --json``)."""
        return cls(
            round_id=round_id,
            dp_enabled=bool(raw["dpEnabled"]),
            noise_multiplier=raw.get("noiseMultiplier"),
            clip_norm=raw.get("clipNorm"),
            sample_rate=float(raw.get("sampleRate") or 1.0),
            population=raw.get("eligiblePopulation"),
            denominator=raw.get("denominator"),
            delta=raw.get("delta"),
            target_quantile=raw.get("clipTargetQuantile"),
            quantile_noise_multiplier=raw.get("quantileNoiseMultiplier"),
            clip_quantile_estimate=raw.get("clipQuantileEstimate"),
            gate_noise_multiplier=raw.get("gateNoiseMultiplier"),
        )


def planned_round(
    round_id: str,
    *,
    dp_enabled: bool,
    noise_multiplier: float,
    clip_norm: float,
    sample_rate: float,
    population: int,
    delta: float,
    target_quantile: float | None = None,
) -> RoundPrivacy:
    """What a round will use, known before any learner is drawn or any delta read.

    The denominator is the expected cohort ``sample_rate x population``; under adaptive clipping
    the count query's noise is set from that same expected cohort. The private gate's query is
    charged with the round (:mod:`aivo_fl.ml.privacy.gate_query`).
    """
    if not dp_enabled:
        return RoundPrivacy(round_id, False, sample_rate=sample_rate, population=population)
    cohort = expected_cohort(sample_rate, population)
    return RoundPrivacy(
        round_id,
        True,
        noise_multiplier=noise_multiplier,
        clip_norm=clip_norm,
        sample_rate=sample_rate,
        population=population,
        denominator=cohort,
        delta=delta,
        target_quantile=target_quantile,
        quantile_noise_multiplier=quantile_noise_multiplier(cohort) if target_quantile is not None else None,
        gate_noise_multiplier=gate_noise_multiplier(noise_multiplier),
    )


@dataclass(frozen=True)
class LedgerTotal:
    epsilon: float | None  # None: no guarantee
    delta: float
    rounds: int
    noised_rounds: int
    no_guarantee_reason: str | None = None

    def over(self, budget: float | None) -> bool:
        return budget is not None and (self.epsilon is None or self.epsilon > budget)


def ledger_delta(rounds: Sequence[RoundPrivacy], fallback: float) -> float:
    """The delta totals are reported at: the latest recorded round's (what the operator targets now)."""
    recorded = [r.delta for r in rounds if r.delta is not None]
    return recorded[-1] if recorded else fallback


def compose_rounds(rounds: Sequence[RoundPrivacy], delta: float) -> LedgerTotal:
    """Epsilon at ``delta`` of all ``rounds``; ``None`` with the reason if any gave no guarantee."""
    events = [r.event() for r in rounds]
    unnoised = [r.round_id for r, e in zip(rounds, events, strict=True) if e is None]
    noised = [e for e in events if e is not None]
    if unnoised:
        named = ", ".join(unnoised[:3]) + (", ..." if len(unnoised) > 3 else "")
        reason = f"{len(unnoised)} round(s) {NO_NOISE} ({named})"
        return LedgerTotal(None, delta, len(rounds), len(noised), reason)
    return LedgerTotal(epsilon_for_events(noised, delta), delta, len(rounds), len(noised))


def learner_totals(ledgers: Mapping[str, Sequence[RoundPrivacy]], delta: float) -> dict[str, LedgerTotal]:
    """Each learner's total over the rounds they could have been sampled in.

    Learners sharing a history (the same multiset of rounds) share one computation.
    """
    by_history: dict[tuple[str, ...], LedgerTotal] = {}
    totals = {}
    for learner, rounds in ledgers.items():
        key = tuple(sorted(r.round_id for r in rounds))
        if key not in by_history:
            by_history[key] = compose_rounds(rounds, delta)
        totals[learner] = by_history[key]
    return totals


def worst_learner(totals: Mapping[str, LedgerTotal]) -> tuple[str | None, LedgerTotal | None]:
    """The learner with the largest epsilon ("no guarantee" counts as the largest)."""
    if not totals:
        return None, None
    learner = max(totals, key=lambda k: float("inf") if totals[k].epsilon is None else totals[k].epsilon)
    return learner, totals[learner]


def check_budget(
    history: Sequence[RoundPrivacy], next_round: RoundPrivacy, budget: float | None, who: str = ""
) -> tuple[LedgerTotal, LedgerTotal, LedgerTotal]:
    """(spent, this round alone, total after) at the next round's delta; raise past ``budget``.

    Called before anything is drawn or released: the worst case is known from the settings alone.
    """
    delta = next_round.delta if next_round.delta is not None else ledger_delta(history, DEFAULT_DELTA)
    spent = compose_rounds(history, delta)
    this_round = compose_rounds([next_round], delta)
    after = compose_rounds([*history, next_round], delta)
    if after.over(budget):
        assert budget is not None
        raise PrivacyBudgetExceeded(spent.epsilon, this_round.epsilon, after.epsilon, budget, who)
    return spent, this_round, after
