"""The population simulation behind the fl_quality benchmark, on a tiny population: the protocol
(declared seeds), the yardsticks' data, the product's gate, intervals, reproducibility."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from aivo_fl.config import load_settings
from aivo_fl.ml.privacy.adaptive_clipping import combined_noise_multiplier
from aivo_fl.ml.privacy.gate_query import gate_noise_multiplier
from aivo_fl.ml.privacy.mechanism import PrivacyEvent, epsilon_for_events
from aivo_fl.ml.round import judge
from aivo_fl.ml.round.gate import CONTRIBUTORS
from aivo_fl.ml.simulation import population_rounds as bench
from aivo_fl.ml.simulation.intervals import Counts, bootstrap, difference, stack, verdict
from aivo_fl.ml.simulation.population import Population, PopulationConfig
from aivo_fl.ml.simulation.world import generate_curriculum
from benchmarks import bench_fl_quality

POPULATION = PopulationConfig(n_learners=150, eval_learners=20, seed=3, median_weekly_interactions=6.0)
WEEKS = 2


def _world(model, population: Population, weeks: int = WEEKS) -> bench.World:
    curriculum = generate_curriculum(3_000, seed=0)
    validation, test = generate_curriculum(1_000, seed=10_003), generate_curriculum(1_000, seed=20_003)
    return bench.build_world(model, population, weeks, "heads", curriculum, validation, test, 3, central_epochs=1)


@pytest.fixture(scope="module")
def world(trained_small: tuple) -> bench.World:
    return _world(trained_small[0], Population(POPULATION))


def _privacy(configuration: str):
    privacy = load_settings(_env_file=None, **bench.CONFIGURATIONS[configuration]).privacy()
    # The test world's 44 learners are far too few for any budget: adaptive clipping's count query
    # alone costs more than 8 in one round. The rounds, not the budget, are under test here.
    return dataclasses.replace(privacy, epsilon_budget=None)


def test_tuning_and_reported_seeds_are_declared_apart() -> None:
    tuning, reported = set(bench.TUNING_SEEDS), set(bench.REPORTED_SEEDS)
    assert not tuning & reported and len(reported) >= 5 and len(tuning) >= 1
    assert bench_fl_quality.check_seeds(bench.REPORTED_SEEDS) == "reported"
    assert bench_fl_quality.check_seeds(bench.TUNING_SEEDS) == "tuning"
    for mixed in ([bench.TUNING_SEEDS[0], bench.REPORTED_SEEDS[0]], [max(tuning | reported) + 1]):
        with pytest.raises(ValueError, match="seeds must all be"):
            bench_fl_quality.check_seeds(mixed)


def test_the_yardsticks_train_only_on_training_learners_data_up_to_their_round(
    trained_small: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every sample the strongest central model (and its choice of settings) and the head-matched
    oracle see is a training interaction of a training learner from a week up to the round."""
    population = Population(POPULATION)
    seen: list[tuple[str, object]] = []
    for name in ("choose_settings", "train_central"):
        real = getattr(bench, name)

        def spy(main, pooled, *args, _real=real, _name=name, **kwargs):
            seen.append((_name, pooled))
            return _real(main, pooled, *args, **kwargs)

        monkeypatch.setattr(bench, name, spy)
    monkeypatch.setattr(bench, "CHECKPOINTS", (2,))
    world = _world(trained_small[0], population, weeks=3)
    assert sorted(world.strongest) == sorted(world.matched) == [2, 3]
    chosen = [p for n, p in seen if n == "choose_settings"]
    trained = [p for n, p in seen if n == "train_central"]
    assert len(chosen) == 1 and len(trained) in (2, 4)  # the matched oracle is the strongest when they agree
    weekly = [population.week(w).train() for w in range(1, 4)]
    pooled = chosen[0]
    assert not pooled.heldout.any() and not set(pooled.learners.tolist()) & set(population.eval_learners.tolist())
    np.testing.assert_array_equal(pooled.samples.features, np.concatenate([w.samples.features for w in weekly]))
    up_to_2 = np.concatenate([w.samples.features for w in weekly[:2]])
    for samples in trained:
        expected = up_to_2 if len(samples) == len(up_to_2) else pooled.samples.features
        np.testing.assert_array_equal(samples.features, expected)
    assert {len(s) for s in trained} == {len(up_to_2), len(pooled)}
    cohort = population.evaluation_cohort.samples.features
    assert not np.isin(cohort[:, 0], pooled.samples.features[:, 0]).any()


def test_the_benchmarks_gate_is_the_products_gate_on_the_drawn_learners(
    world: bench.World, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = judge.gate

    def recording(active, candidate, trained, evaluation, *rest):
        calls.append(evaluation)
        return real(active, candidate, trained, evaluation, *rest)

    monkeypatch.setattr(judge, "gate", recording)
    one_week = bench.World(**{**world.__dict__, "weeks": 1})
    result = bench.run_configuration(one_week, _privacy("small-school preset"), bench.Knobs())
    row = result["rounds"][1]
    assert calls, "the round never reached the product's gate"
    drawn = sum(len(s) for s in calls[0].learners[CONTRIBUTORS])
    # Under DP the private gate hears the drawn learners through its noised query only: their
    # held-out sample count is withheld, as the product withholds it.
    assert drawn > 0 and row["gate_samples"] is None
    # The preset draws about a tenth of the learners: the gate sees their held-out data, not everyone's.
    everyone = len(world.population.week(1).evaluation())
    assert row["included"] < row["learners"] and drawn < everyone
    assert calls[0].curriculum is world.curriculum_val


@pytest.mark.parametrize("configuration", list(bench.CONFIGURATIONS))
def test_each_configuration_runs_its_rounds_and_reports_them(world: bench.World, configuration: str) -> None:
    privacy = _privacy(configuration)
    result = bench.run_configuration(world, privacy, bench.Knobs(server_optimizer="sgd"))
    rows = result["rounds"]
    assert [r["round"] for r in rows] == list(range(WEEKS + 1)) and rows[0]["gap_closed"] == 0.0
    for r in rows[1:]:
        assert r["learners"] > 0 and 0.0 < r["cold_start"] < 1.0 and 0.0 < r["curriculum"] < 1.0
        assert isinstance(r["accepted"], bool)
    last = rows[-1]
    assert 0.0 < last["personalized_clones"] < 1.0  # clones are scored at the checkpoints
    assert last["gap_closed"] == pytest.approx(
        (last["cold_start"] - rows[0]["cold_start"]) / (world.oracle - rows[0]["cold_start"])
    )
    measured = result["measured"][-1]
    assert measured["cold"][0].shape == (len(world.population.eval_learners), 3)
    assert set(measured["personalized"]) == {"clones", "main", "strongest"}
    if not privacy.enabled:
        assert all(r["epsilon"] is None for r in rows[1:]) and result["epsilon_52"] is None
        return
    # A week with fewer than min_learners drawn has no round (the product refuses it): nothing released.
    for before, after in itertools.pairwise(rows):
        assert after["epsilon"] > before["epsilon"] if after["included"] else after["epsilon"] == before["epsilon"]
    assert result["epsilon_52"] > rows[-1]["epsilon"]
    if privacy.sample_rate == 1.0 and privacy.clip_target_quantile is None:  # plain Gaussian rounds
        z = combined_noise_multiplier(privacy.noise_multiplier, gate_noise_multiplier(privacy.noise_multiplier))
        assert rows[2]["epsilon"] == pytest.approx(epsilon_for_events([PrivacyEvent(z)] * 2, privacy.delta))
        assert result["epsilon_52"] == pytest.approx(epsilon_for_events([PrivacyEvent(z)] * 52, privacy.delta))
    assert not math.isnan(result["accuracy"])


def test_a_run_is_reproducible_from_its_seed(world: bench.World) -> None:
    a, b = (Population(POPULATION).week(2) for _ in range(2))
    np.testing.assert_array_equal(a.samples.features, b.samples.features)
    np.testing.assert_array_equal(a.learner, b.learner)
    other = Population(PopulationConfig(**{**POPULATION.__dict__, "seed": 4})).week(2)
    assert len(other) != len(a) or not np.array_equal(other.samples.features, a.samples.features)
    one_week = bench.World(**{**world.__dict__, "weeks": 1})
    preset = _privacy("small-school preset")
    first, second = (bench.run_configuration(one_week, preset, bench.Knobs()) for _ in range(2))
    keys = ("cold_start", "curriculum", "epsilon", "included", "accepted")
    assert [first["rounds"][1][k] for k in keys] == [second["rounds"][1][k] for k in keys]
    np.testing.assert_array_equal(first["measured"][1]["cold"][0], second["measured"][1]["cold"][0])


def test_the_bootstrap_interval_covers_a_known_mean_at_its_stated_rate() -> None:
    """Learners with their own accuracy (Beta(7, 3), mean 0.7) and their own number of interactions,
    independent of it: the pooled accuracy estimates 0.7; 95% intervals cover it about 95% of the time."""
    rng = np.random.default_rng(12)
    trials, covered = 300, 0
    for trial in range(trials):
        total = rng.poisson(20, 60) + 1
        correct = rng.binomial(total, rng.beta(7, 3, 60))
        interval = bootstrap([stack(correct, total=total)], replicates=1_000, seed=trial)
        covered += interval.low <= 0.7 <= interval.high
    assert 0.90 <= covered / trials <= 0.99


def test_intervals_pair_quantities_and_pool_seeds() -> None:
    rng = np.random.default_rng(5)
    total = np.full(200, 10.0)
    base = rng.binomial(10, 0.7, 200).astype(float)
    same = bootstrap([stack(base, base, total=total)], difference)
    assert same.mean == same.low == same.high == 0.0 and "no measurable difference" in verdict(same)
    better = bootstrap([stack(np.minimum(base + 1, 10), base, total=total)] * 3, difference)
    assert better.seeds == 3 and better.low > 0 and "no measurable" not in verdict(better)
    with pytest.raises(ValueError):
        Counts(np.zeros((0, 1)), np.zeros(0))
