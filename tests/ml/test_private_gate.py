"""The private gate: a real trained model, real rounds, the learners' part judged on a noised query."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from aivo_fl.ml.model import CurriculumNet, head_state
from aivo_fl.ml.privacy.adaptive_clipping import combined_noise_multiplier
from aivo_fl.ml.privacy.gate_query import GATE_CLIP, gate_noise_multiplier, noised_changes
from aivo_fl.ml.round.candidate import RoundState, build_candidate
from aivo_fl.ml.round.gate import CONTRIBUTORS, EvaluationSet, Tolerances, with_heads
from aivo_fl.ml.round.gather import LearnerUpdate
from aivo_fl.ml.round.judge import Judging, judge_round, learner_changes, private_verdicts
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.simulation.world import generate_cohort, generate_curriculum
from aivo_fl.ml.training.main_model import TrainingConfig, train_model

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
LEARNERS = 40
# The curriculum guard off: what rejects these rounds is the learners' privatized figure alone.
LEARNERS_ONLY = Tolerances(curriculum=1.0)


@pytest.fixture(scope="module")
def world() -> tuple[CurriculumNet, list, object, object]:
    curriculum = generate_curriculum(1200, seed=0)
    model, _ = train_model(curriculum, TrainingConfig(epochs=5, log_every=100, num_threads=1))
    heldouts = [ld.heldout for ld in generate_cohort(LEARNERS, seed=1)]
    return model, heldouts, generate_curriculum(600, seed=7), curriculum


def _round(world: tuple, deltas: dict[str, dict], privacy: PrivacySettings, options: RoundOptions, seed: int = 0):
    model, heldouts, val, train = world
    ids = sorted(deltas)
    offered = [LearnerUpdate(i, Path(i), 50, "1.0.0", NOW - timedelta(hours=1), 0.0) for i in ids]
    state = RoundState("1.0.0", head_state(model), ["1.0.0"], offered, Path("."), in_memory=deltas)
    rng = np.random.default_rng(seed)
    result = build_candidate(state, options, privacy, NOW, rng)
    by_id = dict(zip(ids, heldouts, strict=False))
    drawn = [by_id[c.learner_id] for c in result.included]
    judging = Judging(model, model, EvaluationSet({CONTRIBUTORS: drawn}, val), train, LEARNERS_ONLY)
    return result, judging, judge_round(result, state, judging, None, rng=rng)


def _honest(model: CurriculumNet, count: int, scale: float = 0.01, seed: int = 3) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    heads = head_state(model)
    return {
        f"learner-{i:03d}": {k: rng.normal(0, scale, v.shape).astype(np.float32) for k, v in heads.items()}
        for i in range(count)
    }


def test_the_gate_query_is_charged_with_the_round(world: tuple) -> None:
    privacy = PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=1.0)
    _, _, judged = _round(world, _honest(world[0], LEARNERS), privacy, RoundOptions(anchor=None))
    record = judged.result.privacy.record
    assert record.gate_noise_multiplier == pytest.approx(gate_noise_multiplier(1.0))
    assert record.event().noise_multiplier == pytest.approx(combined_noise_multiplier(1.0, gate_noise_multiplier(1.0)))
    verdict = judged.verdict
    # Released: the privatized change and its noise std; nothing exact about the learners.
    assert verdict.private is not None and verdict.private.change is not None
    assert verdict.heldout_accuracy_before is None and verdict.heldout_samples is None and not verdict.parts
    assert verdict.improvement_noise_std == pytest.approx(100 * gate_noise_multiplier(1.0) * GATE_CLIP / LEARNERS)


def test_the_gate_noise_is_calibrated(world: tuple) -> None:
    """Over repeated releases on fixed inputs the noise's std is the stated one (within 5%)."""
    model, heldouts, _, _ = world
    rng = np.random.default_rng(5)
    moved = {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in head_state(model).items()}
    changes = learner_changes(model, [with_heads(model, moved)], heldouts)
    assert changes.shape == (LEARNERS, 1) and np.any(changes != 0)
    z = gate_noise_multiplier(1.0)
    releases = [noised_changes(changes, z, float(LEARNERS), np.random.default_rng(s)) for s in range(4000)]
    stated = releases[0].noise_std
    measured = np.std([r.means[0] for r in releases], ddof=1)
    assert stated == pytest.approx(z * GATE_CLIP / LEARNERS)
    assert measured == pytest.approx(stated, rel=0.05)
    # ... and the round's verdict states the same std as the query it released
    result, judging, _ = _round(world, _honest(model, LEARNERS), PrivacySettings(True, 1.0, 1.0), RoundOptions())
    (_, verdict), *_ = private_verdicts([with_heads(model, moved)], judging, result, np.random.default_rng(0))
    assert verdict.private is not None and verdict.private.noise_std == pytest.approx(stated)


def test_the_private_gate_rejects_a_round_with_a_poisoned_learner(world: tuple) -> None:
    model = world[0]
    deltas = _honest(model, LEARNERS)
    # One learner sends the heads' negation, scaled far past any clip: clipped, it still dominates a
    # round whose clip norm is loose (a deployment that trusted its learners).
    deltas["learner-000"] = {k: -50.0 * v for k, v in head_state(model).items()}
    privacy = PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=40.0)
    _, _, judged = _round(world, deltas, privacy, RoundOptions(anchor=None))
    assert not judged.verdict.accepted and judged.tries == 4
    assert "privatized mean" in (judged.verdict.reason or "")
    assert judged.verdict.performance_improvement is not None and judged.verdict.performance_improvement < -2


def test_the_private_gate_rejects_a_server_rate_of_5000(world: tuple) -> None:
    model = world[0]
    privacy = PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=1.0)
    options = RoundOptions(anchor=None, learning_rate=5000.0)
    _, _, judged = _round(world, _honest(model, LEARNERS, scale=0.05), privacy, options)
    assert not judged.verdict.accepted and "privatized mean" in (judged.verdict.reason or "")


def test_a_harmless_round_passes_and_a_dry_run_judges_no_learner(world: tuple) -> None:
    model = world[0]
    # 40 learners at z = 1 would put 4 points of noise on the gate's figure (twice its tolerance):
    # the planner's populations are what keep it small. Here z = 0.2: 0.8 points.
    privacy = PrivacySettings(enabled=True, noise_multiplier=0.2, clip_norm=1.0)
    _, _, judged = _round(world, _honest(model, LEARNERS, scale=0.001), privacy, RoundOptions(anchor=None))
    assert judged.verdict.accepted and judged.tries == 1
    _, _, dry = _round(world, _honest(model, LEARNERS), privacy, RoundOptions(anchor=None, dry_run=True))
    assert dry.verdict.private is not None and dry.verdict.private.change is None
    assert dry.verdict.performance_improvement is None and dry.result.privacy_record is None
