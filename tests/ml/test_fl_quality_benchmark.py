"""The population simulation behind the fl_quality benchmark, on a tiny population: every
configuration through the product's round, rows as reported, epsilon from the recorded rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aivo_fl.config import load_settings
from aivo_fl.ml.privacy.mechanism import PrivacyEvent, epsilon_for_events
from aivo_fl.ml.simulation import population_rounds as bench
from aivo_fl.ml.simulation.population import Population, PopulationConfig
from aivo_fl.ml.simulation.world import generate_curriculum

POPULATION = PopulationConfig(n_learners=150, eval_learners=20, seed=3, median_weekly_interactions=6.0)
WEEKS = 2


@pytest.fixture(scope="module")
def world(trained_small: tuple) -> bench.World:
    curriculum, curriculum_val = generate_curriculum(3_000, seed=0), generate_curriculum(2_000, seed=1)
    return bench.build_world(trained_small[0], Population(POPULATION), WEEKS, "heads", curriculum, curriculum_val)


def test_the_oracle_trains_on_every_weeks_training_interactions_and_never_the_evaluation_cohort() -> None:
    population = Population(POPULATION)
    pooled = bench.oracle_interactions(population, WEEKS)
    weekly = [population.week(w).train() for w in range(1, WEEKS + 1)]
    assert len(pooled) == sum(len(w) for w in weekly) and not pooled.heldout.any()
    assert set(pooled.learners.tolist()) == set(np.concatenate([w.learner for w in weekly]).tolist())
    assert not set(pooled.learners.tolist()) & set(population.eval_learners.tolist())
    np.testing.assert_array_equal(pooled.samples.features, np.concatenate([w.samples.features for w in weekly]))


@pytest.mark.parametrize("configuration", list(bench.CONFIGURATIONS))
def test_each_configuration_runs_its_rounds_and_reports_them(world: bench.World, configuration: str) -> None:
    privacy = load_settings(_env_file=None, **bench.CONFIGURATIONS[configuration]).privacy()
    result = bench.run_configuration(world, privacy, bench.Knobs(server_optimizer="sgd"))
    rows = result["rounds"]
    assert [r["round"] for r in rows] == list(range(WEEKS + 1)) and rows[0]["gap_closed"] == 0.0
    for r in rows[1:]:
        assert r["learners"] > 0 and 0.0 < r["cold_start"] < 1.0 and 0.0 < r["curriculum"] < 1.0
        assert 0.0 < r["personalized_clones"] < 1.0 and isinstance(r["accepted"], bool)
        assert r["gap_closed"] == pytest.approx(
            (r["cold_start"] - rows[0]["cold_start"]) / (world.oracle - rows[0]["cold_start"])
        )
    if not privacy.enabled:
        assert all(r["epsilon"] is None for r in rows[1:]) and result["epsilon_52"] is None
        return
    assert 0 < rows[1]["epsilon"] < rows[2]["epsilon"] and result["epsilon_52"] > rows[-1]["epsilon"]
    if privacy.sample_rate == 1.0 and privacy.clip_target_quantile is None:  # plain Gaussian rounds
        z = privacy.noise_multiplier
        assert rows[2]["epsilon"] == pytest.approx(epsilon_for_events([PrivacyEvent(z)] * 2, privacy.delta))
        assert result["epsilon_52"] == pytest.approx(epsilon_for_events([PrivacyEvent(z)] * 52, privacy.delta))
    assert not math.isnan(result["accuracy"])
