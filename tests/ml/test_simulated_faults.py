"""A simulated week's late updates and broken uploads go through the product's round, which refuses
them for its own reasons: stale from the metadata screen, the file checks' reasons from the files."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from aivo_fl.ml.aggregation.strategies import STRATEGIES
from aivo_fl.ml.model import head_state
from aivo_fl.ml.round.backtrack import Backtracked
from aivo_fl.ml.round.candidate import RoundState, build_candidate
from aivo_fl.ml.round.gate import Tolerances
from aivo_fl.ml.round.gather import Contribution, LearnerUpdate
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.samples import Samples
from aivo_fl.ml.simulation.faults import CUT_OFF, FLIPPED_BYTE, NEVER_LANDED, WeekFaults
from aivo_fl.ml.simulation.population import Population, PopulationConfig
from aivo_fl.ml.simulation.server import SimulatedServer
from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.store.cloning import DELTA_NAME
from aivo_fl.ml.store.safe_files import HASH_MISMATCH, MISSING, TRUNCATED
from tests.ml.delta_files import write_delta

WEEK = datetime(2026, 3, 2, tzinfo=UTC)
# What the product's file checks say about each way an upload breaks.
REFUSED_AS = {FLIPPED_BYTE: HASH_MISMATCH, CUT_OFF: TRUNCATED, NEVER_LANDED: MISSING}
OPEN_GATE = Tolerances(learners=1.0, curriculum=1.0)  # every candidate passes: this is about what reaches it
NO_DP = PrivacySettings(enabled=False, noise_multiplier=0.0, clip_norm=1.0)
OPTIONS = RoundOptions(anchor=None)
POPULATION = PopulationConfig(n_learners=400, eval_learners=20, seed=6, late_fraction=0.05, broken_fraction=0.05)


@pytest.fixture()
def server(trained_small: tuple, small_curriculum: Samples) -> SimulatedServer:
    return SimulatedServer(copy.deepcopy(trained_small[0]), small_curriculum, generate_curriculum(500, seed=1))


def _round(
    server: SimulatedServer, population: Population, week: int, now: datetime, faults: WeekFaults | None
) -> tuple[dict[str, Contribution], Backtracked]:
    """The week's active learners each offer a small honest delta from the active version."""
    data = population.week(week)
    ids = [str(population.ids[i]) for i in data.learners]
    rng = np.random.default_rng(week)
    heads = head_state(server.active)
    deltas = {i: {k: (1e-3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in heads.items()} for i in ids}
    offered = [LearnerUpdate(i, Path(i), 20, server.version, now, float("nan")) for i in ids]
    heldout = {str(population.ids[i]): s for i, s in data.evaluation().by_learner().items()}
    judged = server.round(
        offered, heldout, OPTIONS, NO_DP, now, rng, tolerances=OPEN_GATE, in_memory=deltas, faults=faults
    )
    return {c.learner_id: c for c in judged.result.contributions}, judged


def test_a_populations_late_and_broken_updates_are_refused_by_the_round(server: SimulatedServer) -> None:
    population = Population(POPULATION)
    faults = population.faults(3)
    assert faults.days_late and faults.broken
    contributions, judged = _round(server, population, 3, WEEK, faults)
    for learner, days in faults.days_late.items():
        assert contributions[learner].excluded_reason == f"stale: trained {days} days ago"
    for learner, damage in faults.broken.items():
        assert contributions[learner].excluded_reason == REFUSED_AS[damage]
        assert contributions[learner].update_norm is None and contributions[learner].weight == 0.0
    honest = set(contributions) - set(faults.days_late) - set(faults.broken)
    assert honest and all(contributions[i].excluded_reason is None for i in honest)
    assert judged.verdict.accepted and server.version == "1.1.0"


def test_a_late_update_carries_the_version_it_was_trained_on(server: SimulatedServer) -> None:
    population = Population(replace(POPULATION, late_fraction=0.0, broken_fraction=0.0))
    _round(server, population, 1, WEEK, None)
    assert server.version == "1.1.0" and server.version_at(WEEK - timedelta(seconds=1)) == "1.0.0"
    learners = [str(population.ids[i]) for i in population.week(2).learners]
    gone, offline, late, flipped, cut, lost = learners[:6]
    faults = WeekFaults(
        days_late={gone: 10, offline: 6},  # trained before week 1's promotion, against 1.0.0
        broken={flipped: FLIPPED_BYTE, cut: CUT_OFF, lost: NEVER_LANDED},
    )
    contributions, _ = _round(server, population, 2, WEEK + timedelta(days=5), faults)
    assert contributions[gone].excluded_reason == "stale: trained 10 days ago"
    # Inside the round's 7-day window a delta against the older version counts, discounted.
    assert contributions[offline].excluded_reason is None and contributions[offline].versions_behind == 1
    assert contributions[late].versions_behind == 0
    for learner, damage in faults.broken.items():
        assert contributions[learner].excluded_reason == REFUSED_AS[damage]


def test_faults_need_in_memory_deltas_and_are_one_thing_each(server: SimulatedServer) -> None:
    with pytest.raises(ValueError, match="either late or broken"):
        WeekFaults(days_late={"a": 9}, broken={"a": CUT_OFF})
    with pytest.raises(ValueError, match="unknown damage"):
        WeekFaults(broken={"a": "eaten by the dog"})
    with pytest.raises(ValueError, match="in-memory"):
        server.round([], {}, OPTIONS, NO_DP, WEEK, np.random.default_rng(0), faults=WeekFaults())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_in_memory_round_reads_a_delta_it_does_not_hold_from_its_file(
    trained_small: tuple, tmp_path: Path, strategy: str
) -> None:
    heads = head_state(trained_small[0])
    rng = np.random.default_rng(0)
    ids = [f"learner-{i}" for i in range(6)]
    deltas = {i: {k: (1e-2 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in heads.items()} for i in ids}
    offered = [
        LearnerUpdate(i, tmp_path / i / DELTA_NAME, 10 + n, "1.0.0", WEEK, float("nan")) for n, i in enumerate(ids)
    ]
    options = RoundOptions(strategy=strategy, anchor=None)

    def candidate(in_memory: dict) -> dict[str, np.ndarray]:
        state = RoundState("1.0.0", heads, ["1.0.0"], offered, tmp_path, in_memory=in_memory)
        return build_candidate(state, options, NO_DP, WEEK, np.random.default_rng(1)).candidate_heads

    held = candidate(deltas)
    write_delta(tmp_path, ids[2], deltas[ids[2]])
    from_file = candidate({i: d for i, d in deltas.items() if i != ids[2]})
    for name in heads:
        np.testing.assert_array_equal(from_file[name], held[name])
