"""A round's draw and accounting: budgets before any draw, the population charged, the clip followed."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from aivo_fl.ml.adaptive_clipping import next_clip_norm
from aivo_fl.ml.privacy import PrivacyBudgetExceeded
from aivo_fl.ml.privacy_ledger import compose_rounds
from aivo_fl.ml.round_privacy import PrivacyHistory, draw_round


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    delta: float = 1e-6
    epsilon_budget: float | None = None
    learner_epsilon_budget: float | None = None
    sample_rate: float = 0.2
    clip_target_quantile: float | None = None


LEARNERS = [f"l{i}" for i in range(50)]


def _draw(settings: Settings, history: PrivacyHistory, seed: int = 0):  # type: ignore[no-untyped-def]
    return draw_round(settings, history, LEARNERS, lambda learner: learner, np.random.default_rng(seed))


def _year(settings: Settings, rounds: int) -> PrivacyHistory:
    history = PrivacyHistory()
    for seed in range(rounds):
        draw = _draw(settings, history, seed)
        history = history.after(draw.record, [*draw.drawn, *draw.not_sampled])
    return history


def test_every_eligible_learner_is_charged_and_the_denominator_is_expected() -> None:
    draw = _draw(Settings(), PrivacyHistory())
    assert sorted(draw.drawn + draw.not_sampled) == sorted(LEARNERS) and 0 < len(draw.drawn) < len(LEARNERS)
    assert draw.denominator == pytest.approx(0.2 * 50) and draw.record.population == 50
    history = PrivacyHistory().after(draw.record, [*draw.drawn, *draw.not_sampled])
    undrawn = draw.not_sampled[0]
    assert compose_rounds(history.of(undrawn), 1e-6).epsilon == pytest.approx(draw.epsilon_round)


def test_budgets_refuse_before_any_draw() -> None:
    history = _year(Settings(), 3)
    spent = compose_rounds(history.rounds, 1e-6).epsilon
    rng = np.random.default_rng(9)
    state = rng.bit_generator.state
    with pytest.raises(PrivacyBudgetExceeded) as info:
        draw_round(Settings(epsilon_budget=spent + 1e-3), history, LEARNERS, lambda x: x, rng)
    assert rng.bit_generator.state == state and info.value.spent == pytest.approx(spent)
    # without noise there is no guarantee: any budget refuses, and without a budget the total is None
    with pytest.raises(PrivacyBudgetExceeded, match="no guarantee"):
        _draw(Settings(enabled=False, epsilon_budget=1e9), history)
    off = _draw(Settings(enabled=False), history)
    assert off.epsilon_total is None and off.warning is not None and "No privacy guarantee" in off.warning


def test_learner_budget_leaves_out_only_who_would_cross_it_and_they_are_not_charged() -> None:
    history = _year(Settings(), 2)
    veteran = {learner: history.of(learner) for learner in LEARNERS}
    history = PrivacyHistory(history.rounds, {"l0": veteran["l0"]})  # only l0 has a past
    one_more = compose_rounds([*history.of("l0"), _draw(Settings(), PrivacyHistory()).record], 1e-6).epsilon
    draw = _draw(Settings(learner_epsilon_budget=one_more - 1e-3), history)
    assert draw.out_of_budget == ["l0"] and "l0" not in draw.drawn + draw.not_sampled
    assert draw.record.population == 49 and draw.denominator == pytest.approx(0.2 * 49)
    assert draw.learner_epsilons["l0"] == pytest.approx(compose_rounds(history.of("l0"), 1e-6).epsilon)


def test_adaptive_clip_norm_follows_the_recorded_estimate() -> None:
    adaptive = Settings(clip_target_quantile=0.5, clip_norm=2.0)
    first = _draw(adaptive, PrivacyHistory())
    assert first.record.clip_norm == 2.0 and first.record.quantile_noise_multiplier == pytest.approx(2 * 10 / 20)
    estimated = first.with_clip_estimate([0.1] * len(first.drawn), np.random.default_rng(1))  # all under 2.0
    fraction = estimated.record.clip_quantile_estimate
    history = PrivacyHistory().after(estimated.record, LEARNERS)
    assert history.clip_norm(adaptive) == pytest.approx(next_clip_norm(2.0, fraction, 0.5))
    assert history.clip_norm(adaptive) < 2.0
    assert history.clip_norm(replace(adaptive, clip_target_quantile=None)) == 2.0  # a fixed clip stays fixed
    # the count query is charged: adaptive costs more than the same round with a fixed clip
    assert first.epsilon_round > _draw(Settings(), PrivacyHistory()).epsilon_round
