"""The privacy ledger: totals recomposed from what the rounds recorded, and nothing else."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant

from aivo_fl.ml.privacy import mechanism as privacy
from aivo_fl.ml.privacy.ledger import (
    NO_NOISE,
    RoundPrivacy,
    check_budget,
    compose_rounds,
    learner_totals,
    ledger_delta,
    worst_learner,
)
from aivo_fl.ml.privacy.mechanism import PLD_DISCRETIZATION, PrivacyBudgetExceeded

DELTA = 1e-6


def _round(i: int, z: float | None = 1.0, q: float = 1.0, **kw: object) -> RoundPrivacy:
    return RoundPrivacy(f"r{i}", dp_enabled=z is not None, noise_multiplier=z, sample_rate=q, delta=DELTA, **kw)


MIXED = [
    _round(1, 0.1),  # the guide's defaults
    _round(2, 1.0, 0.1, clip_norm=1.0, population=10_000, denominator=1_000.0),
    _round(3, 1.3, 0.2),
    _round(4, 1.0, 0.1, target_quantile=0.5, quantile_noise_multiplier=2.0),  # adaptive clipping
    _round(5, 1.0, 0.1, clip_norm=0.7, population=10_000, denominator=1_000.0),
]


def _independent(rounds: list[tuple[float, float]], delta: float) -> float:
    """dp-accounting's PLD accountant, one event per round (the ledger composes unsampled rounds as
    one Gaussian first: equal up to the PLD's discretization)."""
    accountant = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for z, q in rounds:
        gaussian = dp_accounting.GaussianDpEvent(z)
        accountant.compose(gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian))
    return accountant.get_epsilon(delta)


def test_changing_settings_compose_exactly_the_recorded_events() -> None:
    adaptive_z = (1.0**-2 + 2.0**-2) ** -0.5
    expected = _independent([(0.1, 1.0), (1.0, 0.1), (1.3, 0.2), (adaptive_z, 0.1), (1.0, 0.1)], DELTA)
    total = compose_rounds(MIXED, DELTA)
    assert total.epsilon == pytest.approx(expected, rel=1e-3)
    assert total.rounds == total.noised_rounds == 5 and total.no_guarantee_reason is None
    # ... and each round on its own
    assert compose_rounds(MIXED[2:3], DELTA).epsilon == pytest.approx(_independent([(1.3, 0.2)], DELTA), rel=1e-9)


def test_from_the_recorded_json() -> None:
    raw = {
        "dpEnabled": True,
        "noiseMultiplier": 1.0,
        "clipNorm": 0.7,
        "sampleRate": 0.1,
        "eligiblePopulation": 10_000,
        "denominator": 1_000.0,
        "delta": DELTA,
        "clipTargetQuantile": 0.5,
        "quantileNoiseMultiplier": 2.0,
        "clipQuantileEstimate": 0.4,
    }
    restored = RoundPrivacy.from_json("r4", raw)
    assert compose_rounds([restored], DELTA) == compose_rounds([MIXED[3]], DELTA)
    assert restored.clip_quantile_estimate == 0.4 and restored.population == 10_000
    legacy = RoundPrivacy.from_json("old", {"dpEnabled": True, "noiseMultiplier": 0.1, "sampleRate": None})
    assert legacy.sample_rate == 1.0 and legacy.event() == MIXED[0].event()


def test_a_round_without_noise_means_no_guarantee() -> None:
    history = [*MIXED[:2], _round(9, None), MIXED[2]]
    total = compose_rounds(history, DELTA)
    assert total.epsilon is None
    assert NO_NOISE in total.no_guarantee_reason and "r9" in total.no_guarantee_reason
    assert total.rounds == 4 and total.noised_rounds == 3
    assert total.over(1e9)  # no budget is large enough
    zero = RoundPrivacy("r0", dp_enabled=True, noise_multiplier=0.0, delta=DELTA)
    assert compose_rounds([zero], DELTA).epsilon is None  # "DP on" with zero noise is no better


def test_learners_are_charged_per_distinct_history_once() -> None:
    privacy._pld_epsilon_of_counts.cache_clear()
    ledgers = {f"l{i}": MIXED[: 1 + i % 3] for i in range(3_000)}  # 3 distinct histories
    ledgers["off"] = [MIXED[0], _round(9, None)]
    totals = learner_totals(ledgers, DELTA)
    assert privacy._pld_epsilon_of_counts.cache_info().misses == 3
    assert totals["l2"].epsilon == pytest.approx(compose_rounds(MIXED[:3], DELTA).epsilon)
    assert totals["l0"].epsilon < totals["l1"].epsilon < totals["l2"].epsilon
    assert worst_learner(totals) == ("off", totals["off"])
    del ledgers["off"]
    _, worst = worst_learner(learner_totals(ledgers, DELTA))
    assert worst is not None and worst.epsilon == totals["l2"].epsilon


def test_delta_is_the_latest_recorded() -> None:
    assert ledger_delta([], 1e-5) == 1e-5
    assert ledger_delta([_round(1), RoundPrivacy("r2", True, 1.0, delta=1e-7), _round(3, None)], 1e-5) == DELTA


def test_budget_refusal_names_spent_round_and_budget() -> None:
    history = MIXED[1:3]
    nxt = _round(6, 1.0, 0.1)
    spent, this_round, after = check_budget(history, nxt, budget=None)
    assert spent.epsilon < after.epsilon
    assert this_round.epsilon == pytest.approx(_independent([(1.0, 0.1)], DELTA), rel=1e-9)
    with pytest.raises(PrivacyBudgetExceeded) as info:
        check_budget(history, nxt, budget=after.epsilon - 0.01)
    message = str(info.value)
    for figure in (spent.epsilon, this_round.epsilon, after.epsilon, after.epsilon - 0.01):
        assert f"{figure:.4g}" in message
    # a round without noise crosses any budget, and says why
    with pytest.raises(PrivacyBudgetExceeded, match="no guarantee"):
        check_budget(history, _round(7, None), budget=1e6)
