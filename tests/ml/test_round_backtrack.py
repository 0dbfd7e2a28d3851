"""Backtracking on the server step: a real trained model, a real round, the real gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from aivo_fl.ml.aggregation.server_optimizers import Momentum
from aivo_fl.ml.model import CurriculumNet, head_state
from aivo_fl.ml.round.backtrack import backtrack
from aivo_fl.ml.round.candidate import RoundResult, RoundState, build_candidate
from aivo_fl.ml.round.gate import EvaluationSet, GateResult, Tolerances, gate, with_heads
from aivo_fl.ml.round.gather import LearnerUpdate
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.simulation.world import generate_cohort, generate_curriculum
from aivo_fl.ml.training.main_model import TrainingConfig, train_model
from tests.ml.test_round import _labelled_by

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
NO_DP = PrivacySettings(enabled=False, noise_multiplier=0.0, clip_norm=1.0)
RATE = 0.5  # FedAvgM: heads = base + RATE x m, m = 0.9 m_old + aggregate


@pytest.fixture(scope="module")
def world() -> tuple[CurriculumNet, list, object]:
    model, _ = train_model(generate_curriculum(1000, seed=0), TrainingConfig(epochs=5, log_every=100, num_threads=1))
    return model, [ld.heldout for ld in generate_cohort(8, seed=1)], generate_curriculum(600, seed=7)


def _round(model: CurriculumNet, delta: dict[str, np.ndarray], state: dict) -> tuple[RoundState, RoundResult]:
    """Three learners who all send ``delta``: the aggregate is ``delta`` itself."""
    ids = [f"learner-{i}" for i in range(3)]
    offered = [LearnerUpdate(i, Path(i), 50, "1.0.0", NOW - timedelta(hours=1), 0.0) for i in ids]
    round_state = RoundState(
        "1.0.0",
        head_state(model),
        ["1.0.0"],
        offered,
        Path("."),
        optimizer_state=state,
        in_memory=dict.fromkeys(ids, delta),
    )
    options = RoundOptions(server_optimizer="momentum", learning_rate=RATE)
    return round_state, build_candidate(round_state, options, NO_DP, NOW, np.random.default_rng(0))


def test_a_refused_step_is_halved_until_the_gate_accepts(world: tuple) -> None:
    model, heldouts, curriculum_val = world
    base = head_state(model)
    rng = np.random.default_rng(11)
    delta = {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in base.items()}
    old_m = {f"m.{k}": rng.normal(0, 0.05, v.shape) for k, v in base.items()}  # a previous round's momentum
    state, result = _round(model, delta, old_m)
    # The learners' own labels are those of the full step's candidate: every step toward it helps them.
    evaluation = EvaluationSet(
        {"contributors": [_labelled_by(with_heads(model, result.candidate_heads), h) for h in heldouts]},
        curriculum_val,
    )

    def judged_with(tolerances: Tolerances):  # type: ignore[no-untyped-def]
        def judge(heads: dict[str, np.ndarray]) -> tuple[CurriculumNet, GateResult]:
            candidate = with_heads(model, heads)
            return candidate, gate(model, candidate, model, evaluation, tolerances)

        return judge

    loose = judged_with(Tolerances(learners=1.0, curriculum=1.0))
    full = loose(result.candidate_heads)[1]
    half = loose({k: base[k] + 0.5 * (result.candidate_heads[k] - base[k]) for k in base})[1]
    drift_full = full.curriculum_reference - full.curriculum_accuracy_after
    drift_half = half.curriculum_reference - half.curriculum_accuracy_after
    assert 0 < drift_half < drift_full and half.performance_improvement > 0  # the setup this test needs

    # A curriculum guard between the two: the full step is refused, half of it passes.
    chosen = backtrack(
        result, state.base_heads, old_m, judged_with(Tolerances(curriculum=(drift_half + drift_full) / 2))
    )
    assert chosen.verdict.accepted and chosen.step_scale == 0.5 and chosen.tries == 2
    assert chosen.result.step_scale == 0.5 and chosen.result.learning_rate == RATE
    # The optimizer state advances once, with the same aggregate (m = 0.9 m_old + aggregate), and the
    # accepted heads move by half the full step along it.
    for name in base:
        m = 0.9 * old_m[f"m.{name}"] + delta[name].astype(np.float64)
        np.testing.assert_allclose(chosen.result.optimizer_state[f"m.{name}"], m, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(
            chosen.result.candidate_heads[name], base[name] + 0.5 * RATE * m, rtol=1e-5, atol=1e-6
        )
    assert chosen.result.optimizer_state.keys() == Momentum().step(base, delta, {})[1].keys()

    # When no scale passes (here: none can gain 100 points on the learners), the round is refused
    # exactly as the full step's verdict says.
    strict = Tolerances(learners=-1.0, curriculum=1.0)
    refused = backtrack(result, state.base_heads, old_m, judged_with(strict))
    assert not refused.verdict.accepted and refused.step_scale == 1.0 and refused.tries == 4
    assert (
        refused.verdict.reason
        == gate(model, with_heads(model, result.candidate_heads), model, evaluation, strict).reason
    )
    assert refused.result is result
