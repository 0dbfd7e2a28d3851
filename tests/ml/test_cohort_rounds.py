"""End to end: a simulated cohort over 5 federated rounds, with the real cloning and local training."""

from __future__ import annotations

from itertools import pairwise

import pytest

from aivo_fl.ml.simulation import simulate_rounds


@pytest.fixture(scope="module")
def rounds(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return simulate_rounds(n_learners=12, rounds=5, seed=0, work_dir=tmp_path_factory.mktemp("sim"))


def test_five_rounds_raise_main_accuracy_on_learners_heldout(rounds: list[dict]) -> None:
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    start = rounds[0]["main_accuracy_before"]
    assert rounds[-1]["main_accuracy_on_learners"] > start + 0.01
    assert sum(r["accepted"] for r in rounds) >= 3
    accepted = [r for r in rounds if r["accepted"]]
    assert rounds[-1]["version_after"] == f"1.{len(accepted)}.0"


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
