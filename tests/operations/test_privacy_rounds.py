"""Rounds against the registry: sampling, the recorded ledger, and budgets that refuse before release."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from aivo_fl.ml.privacy.mechanism import PrivacyBudgetExceeded
from aivo_fl.ml.round.accounting import NOT_SAMPLED
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.operations.aggregation import run_federated_aggregation
from aivo_fl.operations.privacy_report import privacy_summary
from tests.operations.conftest import LEARNERS, Cohort, quiet

SAMPLED = PrivacySettings(
    enabled=True, noise_multiplier=1.0, clip_norm=1.0, delta=1e-6, sample_rate=0.5, clip_target_quantile=0.5
)


def _summary(cohort: Cohort, budget: float | None = None) -> dict:
    return privacy_summary(
        cohort.registry, enabled=True, delta=1e-6, epsilon_budget=budget, learner_epsilon_budget=None
    )


def _store_listing(cohort: Cohort) -> list[str]:
    return sorted(str(p.relative_to(cohort.store.main_root)) for p in cohort.store.main_root.rglob("*"))


def test_sampled_round_records_its_ledger_and_the_budget_refuses_before_release(cohort: Cohort) -> None:
    outcome = run_federated_aggregation(
        cohort.registry,
        cohort.store,
        SAMPLED,
        RoundOptions(min_learners=1),
        report=quiet,
        rng=np.random.default_rng(3),
    )
    [update] = cohort.registry.get_federated_updates()
    recorded = update["privacy"]
    assert recorded["sampleRate"] == 0.5 and recorded["eligiblePopulation"] == LEARNERS
    assert recorded["denominator"] == 0.5 * LEARNERS == outcome.round.privacy.denominator  # never the drawn count
    assert recorded["clipTargetQuantile"] == 0.5 and recorded["quantileNoiseMultiplier"] == pytest.approx(1.0)
    assert recorded["clipNorm"] > 0.0 and recorded["clipQuantileEstimate"] is not None
    # everybody eligible is charged, drawn or not; only the drawn contributed
    assert sorted(update["chargedLearners"]) == sorted(cohort.learners)
    reasons = [c.excluded_reason for c in outcome.round.contributions]
    drawn = [c for c in outcome.round.contributions if c.excluded_reason != NOT_SAMPLED]
    assert 0 < len(drawn) < LEARNERS and reasons.count(NOT_SAMPLED) == LEARNERS - len(drawn)
    assert sorted(update["contributingLearners"]) == sorted(c.learner_id for c in drawn if c.excluded_reason is None)
    spent = _summary(cohort)["worstCaseLearnerEpsilon"]
    assert spent == pytest.approx(outcome.round.privacy.epsilon_total)

    # A budget the next round would cross: refused before anything is drawn or written.
    budget = spent + 0.01
    before = (_store_listing(cohort), cohort.registry.get_federated_updates())
    rng = np.random.default_rng(4)
    rng_state = rng.bit_generator.state
    with pytest.raises(PrivacyBudgetExceeded) as info:
        run_federated_aggregation(
            cohort.registry,
            cohort.store,
            replace(SAMPLED, epsilon_budget=budget),
            RoundOptions(min_learners=1),
            report=quiet,
            rng=rng,
        )
    message = str(info.value)
    assert f"spent epsilon {spent:.4g}" in message and f"budget {budget:.4g}" in message
    assert f"this round would cost {info.value.this_round:.4g}" in message and info.value.projected > budget
    assert rng.bit_generator.state == rng_state  # no learner drawn, no noise drawn
    assert (_store_listing(cohort), cohort.registry.get_federated_updates()) == before
    assert _summary(cohort, budget)["overBudget"] is False  # spent is still within it
    assert _summary(cohort, spent / 2)["overBudget"] is True
