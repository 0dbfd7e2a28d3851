from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from aivo_fl.ml.model import (
    PERSONALIZATION_DEPTHS,
    build_model,
    evaluate_tensors,
    freeze_trunk,
    samples_to_tensors,
)
from aivo_fl.ml.simulation.evaluation import (
    accuracy,
    cold_start_accuracy,
    gap_closed,
    personalized_accuracy,
    train_oracle,
)
from aivo_fl.ml.simulation.population import Population, PopulationConfig, concat_samples
from aivo_fl.ml.simulation.week import train_active_learners
from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.training.batched import evaluate_many, train_many
from aivo_fl.ml.training.local import (
    LearnerBatch,
    LocalTrainingConfig,
    epoch_orders,
    local_steps,
    personal_tensors,
    train_one,
)

POPULATION = PopulationConfig(n_learners=120, eval_learners=20, seed=2, median_weekly_interactions=6.0)


def _learners(week: int = 1, limit: int = 40) -> list[LearnerBatch]:
    data = Population(POPULATION).week(week).train().by_learner()
    return [LearnerBatch(i, *samples_to_tensors(s)) for i, s in list(data.items())[:limit]]


def _batched_and_loop(
    depth: str, config: LocalTrainingConfig, dtype: torch.dtype
) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(start, batched result, loop result) per learner, from different start points (a kept
    personal offset), anchored at the main model."""
    model = build_model(seed=1, frozen_layers=PERSONALIZATION_DEPTHS[depth]).to(dtype)
    freeze_trunk(model)
    learners = [LearnerBatch(b.key, b.x.to(dtype), b.y) for b in _learners()]
    counts = sorted(learner.x.shape[0] for learner in learners)
    assert counts[0] < config.batch_size < 2 * config.batch_size < counts[-1]  # padding and masking happen
    main = personal_tensors(model)
    rng = torch.Generator().manual_seed(0)
    noise = [{k: 0.01 * torch.randn(v.shape, generator=rng).to(dtype) for k, v in main.items()} for _ in learners]
    starts = [{k: main[k] + n[k] for k in main} for n in noise]
    batched = train_many(model, learners, starts, config, group_size=12)
    out = []
    for learner, start, got in zip(learners, starts, batched, strict=True):
        clone = copy.deepcopy(model)
        clone.load_state_dict(start, strict=False)
        train_one(clone, learner, main, config)
        out.append((start, got, {k: v.detach() for k, v in clone.named_parameters() if k in main}))
    return out


@pytest.mark.parametrize("depth", sorted(PERSONALIZATION_DEPTHS))
def test_batched_training_equals_the_one_at_a_time_loop(depth: str) -> None:
    config = LocalTrainingConfig(epochs=2, batch_size=8, learning_rate=0.1, proximal_mu=0.5, seed=4)
    for start, got, expected in _batched_and_loop(depth, config, torch.float32):
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)
            assert not torch.equal(got[key], start[key])  # every learner really trained


@pytest.mark.parametrize("depth", sorted(PERSONALIZATION_DEPTHS))
def test_batched_evaluation_equals_evaluating_each_learner_alone(depth: str) -> None:
    model = build_model(seed=3, frozen_layers=PERSONALIZATION_DEPTHS[depth])
    main = personal_tensors(model)
    rng = torch.Generator().manual_seed(1)
    learners = _learners(limit=30)
    params = [{k: v + 0.3 * torch.randn(v.shape, generator=rng) for k, v in main.items()} for _ in learners]
    samples = [(b.x, b.y) for b in learners] + [(learners[0].x[:0], learners[0].y[:0])]  # and one with none
    params.append(main)

    got = evaluate_many(model, samples, params, group_size=7)  # groups of unequal widths

    for (x, y), own, metrics in zip(samples[:-1], params, got, strict=False):
        clone = copy.deepcopy(model)
        clone.load_state_dict(own, strict=False)
        expected = evaluate_tensors(clone, x, y)
        assert metrics.keys() == expected.keys()
        for head, values in expected.items():
            assert metrics[head]["loss"] == pytest.approx(values["loss"], abs=1e-5)
            assert metrics[head]["accuracy"] == pytest.approx(values["accuracy"], abs=1e-9)
    assert all(np.isnan(m["loss"]) and np.isnan(m["accuracy"]) for m in got[-1].values())


def test_batched_training_is_the_same_maths_as_the_loop_in_float64() -> None:
    # The batched step fuses gradient and update ((1 - lr mu) W - lr dY^T X + lr mu W_main), which
    # rounds differently from the loop's W - lr (G + mu (W - W_main)) in float32; over many steps a
    # unit near a ReLU's kink can amplify that rounding. In float64 nothing is left to amplify: the
    # two paths must agree to rounding, even with long aggressive local training.
    config = LocalTrainingConfig(epochs=3, batch_size=4, learning_rate=0.1, proximal_mu=0.5, seed=4)
    for _, got, expected in _batched_and_loop("guide", config, torch.float64):
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-12)


def test_shuffle_depends_only_on_the_learner_and_covers_its_samples() -> None:
    orders = epoch_orders(np.array([5, 9]), np.array([3, 6]), 6, seed=1, epoch=0)
    assert sorted(orders[0][:3]) == [0, 1, 2] and sorted(orders[1]) == list(range(6))
    alone = epoch_orders(np.array([5]), np.array([3]), 3, seed=1, epoch=0)
    np.testing.assert_array_equal(alone[0], orders[0][:3])
    assert not np.array_equal(epoch_orders(np.array([9]), np.array([6]), 6, 1, 1)[0], orders[1])


def test_proximal_term_keeps_small_learners_near_the_main_model() -> None:
    model = build_model(seed=1, frozen_layers=PERSONALIZATION_DEPTHS["guide"])
    learners = _learners()
    main = personal_tensors(model)

    def distance(mu: float) -> float:
        config = LocalTrainingConfig(epochs=3, batch_size=8, proximal_mu=mu)
        out = train_many(model, learners, [main] * len(learners), config)
        return float(np.mean([sum(float(((o[k] - main[k]) ** 2).sum()) for k in main) for o in out]))

    assert distance(5.0) < 0.8 * distance(0.0)


def test_week_training_keeps_offsets_and_sends_a_step_normalized_fit_from_main() -> None:
    model = build_model(seed=1, frozen_layers=PERSONALIZATION_DEPTHS["heads"])
    population = Population(POPULATION)
    config = LocalTrainingConfig(epochs=2, batch_size=4)
    first = train_active_learners(model, population.week(1).train(), {}, config)
    main = personal_tensors(model)
    assert set(first.offsets) == set(first.learners)
    scales = [config.epochs / local_steps(n, config) for n in first.samples]
    assert min(scales) < 1.0 == max(scales)  # learners past one batch, and learners within one
    for learner, delta, scale in zip(first.learners, first.deltas, scales, strict=True):
        for k in main:  # first session: the clone starts at main, so update == offset x epochs / steps
            torch.testing.assert_close(delta[k], first.offsets[learner][k] * scale, rtol=0, atol=1e-6)

    second = train_active_learners(model, population.week(2).train(), first.offsets, config)
    fresh = train_active_learners(model, population.week(2).train(), {}, config)
    returning = set(first.learners) & set(second.learners)
    assert returning and set(second.offsets) == set(first.learners) | set(second.learners)
    assert second.learners == fresh.learners
    for delta, fresh_delta in zip(second.deltas, fresh.deltas, strict=True):
        for k in main:  # the update never carries the kept personalization: as if the clone were new
            torch.testing.assert_close(delta[k], fresh_delta[k], rtol=0, atol=1e-6)
    for learner in returning:  # while the clone keeps its own: it trained from main + its offset
        assert any(not torch.allclose(second.offsets[learner][k], fresh.offsets[learner][k]) for k in main)


def test_oracle_sees_exactly_the_training_learners_data_and_beats_round_zero(trained_small) -> None:
    main = copy.deepcopy(trained_small[0])
    population = Population(POPULATION)
    weeks = [population.week(w).train() for w in (1, 2, 3, 4)]
    pooled = concat_samples([w.samples for w in weeks])
    assert not set(np.concatenate([w.learner for w in weeks]).tolist()) & set(population.eval_learners.tolist())
    assert len(pooled) == sum(len(w) for w in weeks)
    round0 = cold_start_accuracy(main, population.evaluation_cohort)
    oracle_model = train_oracle(main, pooled)
    oracle = accuracy(oracle_model, population.evaluation_cohort.samples)
    assert oracle > round0 + 0.01  # the shared shift is there to be learned
    frozen = {k: v for k, v in main.state_dict().items() if k not in personal_tensors(main)}
    for k, v in frozen.items():
        torch.testing.assert_close(oracle_model.state_dict()[k], v, rtol=0, atol=0)  # same layers move as in FL
    assert gap_closed(round0, round0, oracle) == 0.0 and gap_closed(oracle, round0, oracle) == 1.0
    assert np.isnan(gap_closed(0.5, 0.6, 0.6))
    assert accuracy(main, generate_curriculum(500, seed=1)) > 0.6


def test_personalized_accuracy_compares_clones_and_main_on_the_same_interactions(trained_small) -> None:
    main = copy.deepcopy(trained_small[0])
    population = Population(POPULATION)
    week = population.week(1)
    update = train_active_learners(main, week.train(), {}, LocalTrainingConfig(epochs=20))
    base = personal_tensors(main)
    personal = {i: {k: base[k] + o[k] for k in o} for i, o in update.offsets.items()}
    result = personalized_accuracy(main, personal, week.evaluation())
    assert result.learners == len(update.learners) and result.samples == len(week.evaluation())
    assert result.main == pytest.approx(accuracy(main, week.evaluation().samples))
    untouched = personalized_accuracy(main, {i: base for i in personal}, week.evaluation())
    assert untouched.clones == pytest.approx(untouched.main)
    assert result.clones != untouched.clones
