"""The privacy planner: its recommendation meets the target when recomposed independently."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant

from aivo_fl.ml.privacy.ledger import planned_round
from aivo_fl.ml.privacy.planner import plan

RATES = (0.02, 0.1)


def _independent_year(z: float, q: float, population: int, rounds: int, delta: float) -> float:
    """dp-accounting's PLD on the round as the ledger records it (update, count and gate queries)."""
    record = planned_round(
        "r",
        dp_enabled=True,
        noise_multiplier=z,
        clip_norm=1.0,
        sample_rate=q,
        population=population,
        delta=delta,
        target_quantile=0.5,
    )
    combined = sum(m**-2 for m in (z, record.quantile_noise_multiplier, record.gate_noise_multiplier)) ** -0.5
    accountant = PLDAccountant(value_discretization_interval=1e-4)  # finer than the product's grid
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(combined)), rounds)
    return accountant.get_epsilon(delta)


def test_the_recommendation_meets_its_target_when_recomposed() -> None:
    found = plan(2.0, 52, 50_000, 1e-6, sample_rates=RATES)
    chosen = found.recommended
    assert chosen is not None and chosen.useful and chosen.relative_noise <= found.max_relative_noise
    assert chosen.sample_rate == min(r.sample_rate for r in found.rows if r.useful)  # the fewest learners
    year = _independent_year(chosen.noise_multiplier, chosen.sample_rate, 50_000, 52, 1e-6)
    assert year <= 2.0 and year == pytest.approx(chosen.epsilon, rel=0.01)
    # ... and it is the least noise that does (to the planner's 1%): 2% less overshoots
    assert _independent_year(0.98 * chosen.noise_multiplier, chosen.sample_rate, 50_000, 52, 1e-6) > 2.0
    assert chosen.expected_cohort == chosen.sample_rate * 50_000
    assert chosen.relative_noise == pytest.approx(chosen.noise_multiplier / chosen.expected_cohort)


def test_an_unreachable_target_names_the_population_it_needs() -> None:
    small = plan(2.0, 52, 2_000, 1e-6, sample_rates=RATES)
    assert small.recommended is None and small.population_needed is not None and small.population_needed > 2_000
    assert f"needs about {small.population_needed:,} eligible learners" in small.line()
    assert "\n" not in small.line()
    assert plan(2.0, 52, small.population_needed, 1e-6, sample_rates=RATES).recommended is not None


def test_a_target_sets_each_rounds_noise_and_rate_and_a_small_population_is_refused() -> None:
    from aivo_fl.config import load_settings
    from aivo_fl.ml.round.accounting import PrivacyPlanOutOfReach, planned_settings

    privacy = load_settings(_env_file=None, PRIVACY_PRESET="user-level").privacy()
    planned = planned_settings(privacy, 50_000)
    expected = plan(2.0, 52, 50_000, 1e-6).recommended
    assert expected is not None
    assert (planned.noise_multiplier, planned.sample_rate) == (expected.noise_multiplier, expected.sample_rate)
    with pytest.raises(PrivacyPlanOutOfReach, match=r"needs about .* eligible learners.*small-schools"):
        planned_settings(privacy, 2_000)
