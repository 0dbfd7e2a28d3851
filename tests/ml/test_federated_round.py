"""The round: exclusions with reasons, staleness, DP wiring, version bumps, and the degradation gate."""

from __future__ import annotations

import os
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from aivo_fl.ml import deltas
from aivo_fl.ml.cloning import DELTA_NAME
from aivo_fl.ml.data import generate_cohort, generate_curriculum
from aivo_fl.ml.federated_round import (
    LearnerUpdate,
    NoEligibleLearners,
    PrivacySettings,
    RoundOptions,
    aggregate_round,
    next_version,
    staleness_factor,
)
from aivo_fl.ml.model import CurriculumNet, head_state
from aivo_fl.ml.privacy import BUDGET_SPENT, PrivacyBudgetExceeded, PrivacyEvent, epsilon_for_events
from aivo_fl.ml.training import TrainingConfig, train_model
from aivo_fl.ml.validation_gate import validate_candidate, with_heads
from tests.ml.delta_files import write_delta, write_raw

SHAPES = {"heads.d.weight": (5, 8), "heads.d.bias": (5,), "heads.s.weight": (2, 8), "heads.s.bias": (2,)}
NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
HISTORY = ["1.0.0", "1.1.0", "1.2.0"]
NO_DP = PrivacySettings(enabled=False, noise_multiplier=0.0, clip_norm=1.0)


def _base() -> dict[str, np.ndarray]:
    return {k: np.full(s, 0.5, np.float32) for k, s in SHAPES.items()}


def _delta(seed: int, scale: float = 0.1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def _update(tmp: Path, i: int, delta: dict | None = None, **kw: object) -> LearnerUpdate:
    path = tmp / f"learner-{i}" / DELTA_NAME  # the learner store's layout, manifest included
    if delta is not None or not kw.pop("no_file", False):
        write_delta(tmp, f"learner-{i}", delta if delta is not None else _delta(i))
    fields = {
        "learner_id": f"learner-{i}",
        "delta_path": path,
        "num_samples": 100 + 10 * i,
        "source_version": "1.2.0",
        "trained_at": NOW - timedelta(hours=i + 1),
        "improvement": 0.02 * i,
    }
    fields.update(kw)
    return LearnerUpdate(**fields)  # type: ignore[arg-type]


def _run(
    updates: list[LearnerUpdate],
    options: RoundOptions | None = None,
    privacy: PrivacySettings = NO_DP,
    events: list[PrivacyEvent] | None = None,
    ledger: dict | None = None,
    seed: int = 0,
):  # type: ignore[no-untyped-def]
    return aggregate_round(
        _base(),
        "1.2.0",
        HISTORY,
        updates,
        options or RoundOptions(),
        privacy,
        events or [],
        ledger or {},
        NOW,
        np.random.default_rng(seed),
        learners_root=Path(os.path.commonpath([u.delta_path.parent.parent for u in updates])),
    )


def test_fedavg_round_is_base_plus_sample_weighted_mean(tmp_path: Path) -> None:
    updates = [_update(tmp_path, i) for i in range(5)]
    result = _run(updates, RoundOptions(learning_rate=0.5))
    w = np.array([u.num_samples for u in updates], float)
    for name in SHAPES:
        mean = np.average(np.stack([_delta(i)[name] for i in range(5)]).astype(np.float64), axis=0, weights=w)
        np.testing.assert_allclose(result.candidate_heads[name], 0.5 + 0.5 * mean, rtol=1e-6)
        assert result.candidate_heads[name].dtype == np.float32
    assert [c.weight for c in result.contributions] == pytest.approx(list(w / w.sum()))
    assert result.epsilon_round is None and result.privacy_event is None
    assert all(c.excluded_reason is None and c.update_norm > 0 for c in result.contributions)


def test_each_bad_delta_is_excluded_with_its_reason_and_the_round_goes_on(tmp_path: Path) -> None:
    good = [_update(tmp_path, i) for i in range(3)]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    wrong_shape = _delta(9)
    wrong_shape["heads.d.bias"] = np.zeros(4, np.float32)
    wrong_dtype = {k: v.astype(np.float64) for k, v in _delta(10).items()}
    nan = _delta(11)
    nan["heads.s.weight"][0, 0] = np.nan
    extra = {**_delta(12), "trunk.0.weight": np.zeros((2, 2), np.float32)}
    bad = [
        _update(bad_dir, 10, no_file=True),
        _update(bad_dir, 11, delta=_delta(11, scale=1e5)),
        _update(bad_dir, 12, delta=wrong_shape),
        _update(bad_dir, 13, delta=wrong_dtype),
        _update(bad_dir, 14, delta=nan),
        _update(bad_dir, 15, delta=extra),
        _update(bad_dir, 16),
        _update(bad_dir, 17),
        _update(bad_dir, 18),
    ]
    raw = bad[6].delta_path.read_bytes()
    # The manifests vouch for these bytes: the content checks must catch them on their own.
    write_raw(bad_dir, "learner-16", raw[:-7])
    write_raw(bad_dir, "learner-17", pickle.dumps({"heads.d.bias": [0.0] * 5}))
    write_raw(bad_dir, "learner-18", np.random.default_rng(3).bytes(999))
    result = _run(good + bad)
    reasons = {c.learner_id: c.excluded_reason for c in result.contributions}
    assert reasons == {
        "learner-0": None,
        "learner-1": None,
        "learner-2": None,
        "learner-10": deltas.MISSING,
        "learner-11": deltas.ABSURD_NORM,
        "learner-12": deltas.WRONG_SHAPE,
        "learner-13": deltas.WRONG_DTYPE,
        "learner-14": deltas.NON_FINITE,
        "learner-15": deltas.WRONG_NAMES,
        "learner-16": deltas.TRUNCATED,
        "learner-17": deltas.NOT_SAFETENSORS,
        "learner-18": deltas.NOT_SAFETENSORS,
    }
    assert all(c.weight == 0.0 for c in result.excluded)
    clean = _run(good)
    for name in SHAPES:
        np.testing.assert_array_equal(result.candidate_heads[name], clean.candidate_heads[name])


def test_stale_and_lineage_exclusions(tmp_path: Path) -> None:
    updates = [
        _update(tmp_path, 0),
        _update(tmp_path, 1),
        _update(tmp_path, 2, source_version="1.0.0"),  # two versions behind: kept, down-weighted
        _update(tmp_path, 3, trained_at=NOW - timedelta(days=9, hours=2)),
        _update(tmp_path, 4, source_version="0.9.0"),
        _update(tmp_path, 5, num_samples=0),
    ]
    result = _run(updates)
    reasons = [c.excluded_reason for c in result.contributions]
    assert reasons[:3] == [None, None, None]
    assert reasons[3] == "stale: trained 9 days ago"
    assert reasons[4] == "unknown source version 0.9.0"
    assert reasons[5] == "no training samples"
    assert result.trained_in_window == 5
    raw = np.array([100 * 1.0, 110 * 1.0, 120 * staleness_factor(2)])
    assert [c.weight for c in result.included] == pytest.approx(list(raw / raw.sum()))
    assert result.contributions[2].versions_behind == 2
    assert staleness_factor(0) == 1.0 and staleness_factor(3) == pytest.approx(0.5)


def test_too_few_learners_raises_with_counts(tmp_path: Path) -> None:
    updates = [
        _update(tmp_path, 0),
        _update(tmp_path, 1, no_file=True),
        _update(tmp_path, 2),
        _update(tmp_path, 3, trained_at=NOW - timedelta(days=30)),
    ]
    with pytest.raises(NoEligibleLearners, match=r"No eligible learners") as info:
        _run(updates)
    assert info.value.eligible == 2 and info.value.trained_in_window == 3 and info.value.min_learners == 3
    assert "3 learner(s) who trained in the last 7 days" in str(info.value) and "at least 3" in str(info.value)


def test_unknown_strategy_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid strategies: fedavg, weighted, trimmed_mean, median"):
        _run([_update(tmp_path, i) for i in range(3)], RoundOptions(strategy="krum"))


def test_robust_strategies_in_a_round_resist_a_poisoned_learner(tmp_path: Path) -> None:
    honest = [_update(tmp_path, i, delta={k: np.full(s, 0.1, np.float32) for k, s in SHAPES.items()}) for i in range(6)]
    poisoned = _update(tmp_path, 9, delta={k: np.full(s, 50.0, np.float32) for k, s in SHAPES.items()})
    for strategy in ("median", "trimmed_mean"):
        result = _run([*honest, poisoned], RoundOptions(strategy=strategy, block_bytes=8 * 7 * 5))
        for name in SHAPES:
            np.testing.assert_allclose(result.candidate_heads[name], 0.6, rtol=1e-6)
    fed = _run([*honest, poisoned])
    assert np.all(fed.candidate_heads["heads.d.bias"] > 5)


def test_weighted_strategy_favours_learners_who_improved(tmp_path: Path) -> None:
    updates = [_update(tmp_path, i, improvement=g, num_samples=100) for i, g in enumerate([0.2, -0.1, 0.0])]
    result = _run(updates, RoundOptions(strategy="weighted"))
    assert [c.weight for c in result.contributions] == pytest.approx([0.2 / 0.22, 0.01 / 0.22, 0.01 / 0.22])


def test_dp_round_clips_noises_and_accounts(tmp_path: Path) -> None:
    updates = [_update(tmp_path, i, delta=_delta(i, scale=1.0 if i == 0 else 0.01), num_samples=300) for i in range(4)]
    privacy = PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=0.5)
    events = [PrivacyEvent(1.0)] * 2
    ledger = {"learner-0": [PrivacyEvent(1.0)] * 2, "learner-1": 5}
    result = _run(updates, privacy=privacy, events=events, ledger=ledger)
    assert result.contributions[0].clipped and not result.contributions[1].clipped
    assert result.denominator == 4.0 and result.noise_std == pytest.approx(0.5 / 4.0)
    assert [c.weight for c in result.included] == pytest.approx([0.25] * 4)  # capped weights / D
    assert result.privacy_event == PrivacyEvent(1.0, 1.0)
    assert result.epsilon_round == pytest.approx(epsilon_for_events([PrivacyEvent(1.0)]))
    assert result.epsilon_total == pytest.approx(epsilon_for_events([PrivacyEvent(1.0)] * 3))
    assert result.learner_epsilons["learner-0"] == pytest.approx(result.epsilon_total)
    assert result.learner_epsilons["learner-1"] == pytest.approx(epsilon_for_events([PrivacyEvent(1.0)] * 6))
    assert result.learner_epsilons["learner-2"] == pytest.approx(result.epsilon_round)
    assert result.privacy_warning is None
    # the aggregate is noise-dominated but the same seed reproduces it
    again = _run(updates, privacy=privacy, events=events, ledger=ledger)
    np.testing.assert_array_equal(result.candidate_heads["heads.d.weight"], again.candidate_heads["heads.d.weight"])


def test_dp_with_tiny_noise_multiplier_warns(tmp_path: Path) -> None:
    privacy = PrivacySettings(enabled=True, noise_multiplier=0.1, clip_norm=1.0)
    result = _run([_update(tmp_path, i) for i in range(3)], privacy=privacy)
    assert result.epsilon_round > 10
    assert "far too large to give meaningful privacy" in (result.privacy_warning or "")


def test_dp_refuses_robust_strategies(tmp_path: Path) -> None:
    privacy = PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=1.0)
    with pytest.raises(ValueError, match="cannot be combined with differential privacy"):
        _run([_update(tmp_path, i) for i in range(3)], RoundOptions(strategy="median"), privacy=privacy)


def test_global_budget_refuses_the_round(tmp_path: Path) -> None:
    events = [PrivacyEvent(1.0)] * 4
    budget = epsilon_for_events(events) + 0.1
    privacy = PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=1.0, epsilon_budget=budget)
    with pytest.raises(PrivacyBudgetExceeded) as info:
        _run([_update(tmp_path, i) for i in range(3)], privacy=privacy, events=events)
    assert info.value.budget == budget and info.value.projected > budget


def test_learner_whose_budget_is_spent_is_excluded(tmp_path: Path) -> None:
    one = epsilon_for_events([PrivacyEvent(1.0)])
    privacy = PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=1.0, learner_epsilon_budget=one * 1.5)
    ledger = {"learner-0": [PrivacyEvent(1.0)] * 3}
    result = _run([_update(tmp_path, i) for i in range(4)], privacy=privacy, ledger=ledger)
    assert result.contributions[0].excluded_reason == BUDGET_SPENT
    assert result.learner_epsilons["learner-0"] == pytest.approx(epsilon_for_events([PrivacyEvent(1.0)] * 3))
    assert len(result.included) == 3


def test_dry_run_releases_nothing(tmp_path: Path) -> None:
    privacy = PrivacySettings(enabled=True, noise_multiplier=1.0, clip_norm=1.0)
    result = _run([_update(tmp_path, i) for i in range(3)], RoundOptions(dry_run=True), privacy=privacy)
    assert result.candidate_heads is None and result.privacy_event is None and result.dry_run
    assert result.epsilon_round is not None and len(result.included) == 3


def test_next_version() -> None:
    assert next_version("1.0.0") == "1.1.0"
    assert next_version("1.9.3") == "1.10.0"
    assert next_version("1.2.3", "patch") == "1.2.4" and next_version("1.2.3", "major") == "2.0.0"
    with pytest.raises(ValueError):
        next_version("v1.0")


@pytest.fixture(scope="module")
def trained() -> tuple[CurriculumNet, list, object]:
    model, _ = train_model(generate_curriculum(1000, seed=0), TrainingConfig(epochs=5, log_every=100, num_threads=1))
    cohort = generate_cohort(8, seed=1)
    return model, [ld.heldout for ld in cohort], generate_curriculum(600, seed=7)


def test_gate_rejects_a_harmful_round(trained: tuple) -> None:
    model, heldouts, curriculum_val = trained
    rng = np.random.default_rng(0)
    heads = head_state(model)
    harmful = {k: v + rng.normal(0, 5.0, v.shape).astype(np.float32) for k, v in heads.items()}
    gate = validate_candidate(model, with_heads(model, harmful), heldouts, curriculum_val)
    assert not gate.accepted
    assert gate.reason is not None and gate.reason.startswith("Performance degradation:")
    assert gate.performance_improvement < -2.0
    assert gate.curriculum_accuracy_after < gate.curriculum_accuracy_before


def test_gate_accepts_an_unchanged_model(trained: tuple) -> None:
    model, heldouts, curriculum_val = trained
    gate = validate_candidate(model, with_heads(model, head_state(model)), heldouts, curriculum_val)
    assert gate.accepted and gate.reason is None and gate.performance_improvement == 0.0
    assert gate.heldout_samples == sum(len(h) for h in heldouts)
    assert 0.2 < gate.heldout_accuracy_before < 1.0
