"""A round's draw and accounting: budgets before any draw, the population charged, the clip followed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from aivo_fl.ml.privacy.adaptive_clipping import next_clip_norm
from aivo_fl.ml.privacy.ledger import compose_rounds
from aivo_fl.ml.privacy.mechanism import PrivacyBudgetExceeded
from aivo_fl.ml.round.accounting import PrivacyHistory, account_round
from aivo_fl.ml.round.gather import Update
from aivo_fl.ml.round.options import PrivacySettings

LEARNERS = [f"l{i}" for i in range(50)]
UPDATES = tuple(Update(i, learner, Path("unused"), 100, 0.0, 1.0, 0.5, 0) for i, learner in enumerate(LEARNERS))


def Settings(**kw: object) -> PrivacySettings:
    fields: dict[str, object] = dict(enabled=True, noise_multiplier=1.0, clip_norm=1.0, delta=1e-6, sample_rate=0.2)
    return PrivacySettings(**(fields | kw))  # type: ignore[arg-type]


def _ids(updates: tuple[Update, ...]) -> list[str]:
    return [u.learner_id for u in updates]


def _draw(settings: PrivacySettings, history: PrivacyHistory, seed: int = 0, rng=None):  # type: ignore[no-untyped-def]
    rng = rng if rng is not None else np.random.default_rng(seed)
    return account_round(settings, history, UPDATES, rng, release=True)


def _year(settings: PrivacySettings, rounds: int) -> PrivacyHistory:
    history = PrivacyHistory()
    for seed in range(rounds):
        draw = _draw(settings, history, seed)
        history = history.after(draw.record, _ids(draw.charged))
    return history


def test_every_eligible_learner_is_charged_and_the_denominator_is_expected() -> None:
    draw = _draw(Settings(), PrivacyHistory())
    assert sorted(_ids(draw.charged)) == sorted(LEARNERS) and 0 < len(draw.included) < len(LEARNERS)
    assert draw.denominator == pytest.approx(0.2 * 50) and draw.record.population == 50
    history = PrivacyHistory().after(draw.record, _ids(draw.charged))
    undrawn = draw.not_sampled[0].learner_id
    assert compose_rounds(history.of(undrawn), 1e-6).epsilon == pytest.approx(draw.epsilon_round)


def test_budgets_refuse_before_any_draw() -> None:
    history = _year(Settings(), 3)
    spent = compose_rounds(history.rounds, 1e-6).epsilon
    rng = np.random.default_rng(9)
    state = rng.bit_generator.state
    with pytest.raises(PrivacyBudgetExceeded) as info:
        _draw(Settings(epsilon_budget=spent + 1e-3), history, rng=rng)
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
    assert _ids(draw.out_of_budget) == ["l0"] and "l0" not in _ids(draw.charged)
    assert draw.record.population == 49 and draw.denominator == pytest.approx(0.2 * 49)
    assert draw.learner_epsilons["l0"] == pytest.approx(compose_rounds(history.of("l0"), 1e-6).epsilon)


def test_adaptive_clip_norm_follows_the_recorded_estimate() -> None:
    adaptive = Settings(clip_target_quantile=0.5, clip_norm=2.0)
    first = _draw(adaptive, PrivacyHistory())  # every update norm is 0.5, under 2.0
    assert first.record.clip_norm == 2.0 and first.record.quantile_noise_multiplier == pytest.approx(2 * 10 / 20)
    fraction = first.record.clip_quantile_estimate
    assert fraction is not None
    history = PrivacyHistory().after(first.record, LEARNERS)
    assert history.clip_norm(adaptive) == pytest.approx(next_clip_norm(2.0, fraction, 0.5))
    assert history.clip_norm(adaptive) < 2.0
    assert history.clip_norm(replace(adaptive, clip_target_quantile=None)) == 2.0  # a fixed clip stays fixed
    # the count query is charged: adaptive costs more than the same round with a fixed clip
    assert first.epsilon_round > _draw(Settings(), PrivacyHistory()).epsilon_round


def test_epsilon_is_composed_once_per_distinct_history_not_once_per_learner() -> None:
    from aivo_fl.ml.privacy import mechanism as privacy

    history = _year(Settings(), 3)
    veterans = {learner: history.of(learner) for learner in LEARNERS}
    many = tuple(Update(i, f"m{i}", Path("unused"), 100, 0.0, 1.0, 0.5, 0) for i in range(3_000))
    # 3,000 learners sharing the 50 veterans' histories (at most 50 distinct), and a budget to check
    ledgers = {u.learner_id: veterans[LEARNERS[u.index % len(LEARNERS)]] for u in many}
    distinct = len({tuple(r.round_id for r in rounds) for rounds in ledgers.values()})
    privacy._epsilon_of_counts.cache_clear()
    budget = Settings(learner_epsilon_budget=1e9)
    draw = account_round(budget, PrivacyHistory(history.rounds, ledgers), many, np.random.default_rng(0), release=True)
    calls = privacy._epsilon_of_counts.cache_info()
    assert len(draw.learner_epsilons) == 3_000 and len(draw.out_of_budget) == 0
    # per distinct history: once for the budget check, once for the learner's figure (cached), plus the round's
    assert calls.hits + calls.misses <= 2 * distinct + 4 < 3_000
