"""End to end: a simulated cohort over 5 federated rounds through the product's round steps, with the
real cloning and local training."""

from __future__ import annotations

from itertools import pairwise

import pytest

from aivo_fl.ml.round.gate import DEFAULT_CURRICULUM_TOLERANCE
from aivo_fl.ml.simulation.cohort import simulate_rounds


@pytest.fixture(scope="module")
def rounds(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return simulate_rounds(n_learners=12, rounds=5, seed=0, work_dir=tmp_path_factory.mktemp("sim"))


def test_five_rounds_raise_main_accuracy_on_learners_heldout(rounds: list[dict]) -> None:
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    start = rounds[0]["main_accuracy_before"]
    assert rounds[-1]["main_accuracy_on_learners"] > start + 0.01
    accepted = [r for r in rounds if r["accepted"]]
    assert accepted and rounds[-1]["version_after"] == f"1.{len(accepted)}.0"


def test_curriculum_drift_stays_inside_the_cumulative_tolerance(rounds: list[dict]) -> None:
    # The cohort drifts away from the curriculum and DP noise costs a little every round: the gate
    # bounds the total against the trained version 1.0.0, so the promoted lineage never passes it.
    reference = rounds[0]["curriculum_reference"]
    assert all(r["curriculum_reference"] == reference for r in rounds)
    assert all(r["curriculum_accuracy"] >= reference - DEFAULT_CURRICULUM_TOLERANCE for r in rounds)
    for r in rounds:
        assert r["accepted"] or "cumulative tolerance" in r["gate_reason"]


def test_personalized_clones_beat_the_main_model_on_their_own_learners(rounds: list[dict]) -> None:
    for r in rounds:
        assert r["personalized_accuracy"] > r["main_accuracy_on_learners"] + 0.03


def test_privacy_is_accounted_every_round(rounds: list[dict]) -> None:
    totals = [r["epsilon_total"] for r in rounds]
    assert all(b > a for a, b in pairwise(totals))
    assert rounds[0]["epsilon_round"] == pytest.approx(totals[0])
    assert "far too large" in rounds[0]["privacy_warning"]  # the env default noise multiplier 0.1


def test_every_learner_took_part(rounds: list[dict]) -> None:
    assert all(r["included"] == 12 and r["excluded"] == 0 for r in rounds)
