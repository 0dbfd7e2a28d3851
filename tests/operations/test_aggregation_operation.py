"""An aggregation round against the real registry and store: crashes, leases, bad files, dry runs,
the server optimizer's state across rounds."""

from __future__ import annotations

import numpy as np
import pytest

from aivo_fl.ml.model import head_state
from aivo_fl.ml.round.gather import NoEligibleLearners
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.store.artifacts import ArtifactError, load_main_model
from aivo_fl.ml.store.clone_file import CLONE_NAME
from aivo_fl.ml.store.safe_files import read_manifest
from aivo_fl.operations.aggregation import (
    SERVER_STATE_NAME,
    curriculum_splits,
    load_server_state,
    run_federated_aggregation,
)
from aivo_fl.operations.app_simulation import simulate_activity
from aivo_fl.operations.learners import train_learner_locally
from aivo_fl.registry import AggregationInProgress
from aivo_fl.registry.schema import ModelVersionStatus
from tests.app_side import contribution_reasons
from tests.operations.conftest import LEARNERS, PRIVACY, Cohort, quiet

NO_DP = PrivacySettings(enabled=False, noise_multiplier=0.0, clip_norm=1.0)
# A server step this small leaves every prediction as it was: the gate has to promote.
HARMLESS = 1e-6
HARMFUL = 200.0


def aggregate(cohort: Cohort, privacy: PrivacySettings = PRIVACY, report=quiet, **options: object):  # type: ignore[no-untyped-def]
    return run_federated_aggregation(
        cohort.registry,
        cohort.store,
        privacy,
        RoundOptions(**options),  # type: ignore[arg-type]
        report=report,
        rng=np.random.default_rng(0),
    )


def _statuses(cohort: Cohort) -> dict[str, ModelVersionStatus]:
    return {v.version: v.status for v in cohort.registry.list_main_versions()}


def test_a_crash_between_writing_weights_and_registering_leaves_the_old_version(
    cohort: Cohort, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_: object, **__: object) -> None:
        raise RuntimeError("power cut")

    with monkeypatch.context() as patch:
        patch.setattr(cohort.registry, "record_federated_update", crash)
        with pytest.raises(RuntimeError, match="power cut"):
            aggregate(cohort, NO_DP, learning_rate=HARMLESS)
    # The registry never saw the round: 1.0.0 is still active, complete and loadable.
    assert _statuses(cohort) == {"1.0.0": ModelVersionStatus.ACTIVE}
    assert cohort.registry.get_federated_updates() == []
    assert cohort.registry.round_privacy_records() == []
    orphan = cohort.store.main_root / "1.1.0"
    assert (orphan / "model.safetensors").is_file()  # written whole (atomic rename), just never registered
    # The lease was released, and the orphan's number is never reused.
    outcome = aggregate(cohort, NO_DP, learning_rate=HARMLESS)
    assert outcome.promoted and outcome.new_version == "1.2.0"
    assert _statuses(cohort) == {"1.0.0": ModelVersionStatus.DEPRECATED, "1.2.0": ModelVersionStatus.ACTIVE}


def test_a_round_started_elsewhere_holds_the_lease(cohort: Cohort) -> None:
    with cohort.registry.aggregation_lock("cli-on-another-host"):
        with pytest.raises(AggregationInProgress, match="cli-on-another-host"):
            aggregate(cohort)
        aggregate(cohort, dry_run=True)  # a dry run reads only and needs no lease
    assert cohort.registry.get_federated_updates() == []


def test_corrupt_delta_files_are_excluded_with_their_reason_and_the_round_goes_on(cohort: Cohort) -> None:
    flipped = cohort.store.learner_dir(cohort.learners[1]) / CLONE_NAME
    broken = {
        cohort.learners[0]: b"",  # truncated to nothing
        cohort.learners[1]: flipped.read_bytes()[:-1] + bytes([flipped.read_bytes()[-1] ^ 1]),  # one bit flipped
    }
    for learner_id, content in broken.items():
        (cohort.store.learner_dir(learner_id) / CLONE_NAME).write_bytes(content)
    (cohort.store.learner_dir(cohort.learners[2]) / CLONE_NAME).unlink()
    outcome = aggregate(cohort)
    excluded = {c.learner_id: c.excluded_reason for c in outcome.round.excluded}
    assert set(excluded) == {cohort.learners[0], cohort.learners[1], cohort.learners[2]}
    assert excluded[cohort.learners[2]].startswith("missing file")
    assert excluded[cohort.learners[0]] == "truncated"
    assert excluded[cohort.learners[1]] == "hash mismatch"
    assert len(outcome.round.included) == LEARNERS - 3
    # Released: counts by reason (read before the draw at sample rate 1), no learner named.
    released = outcome.summary()["excludedByReason"]
    assert released["truncated"] == released["hash mismatch"] == 1 and sum(released.values()) == 3
    [update] = cohort.registry.get_federated_updates()
    recorded = contribution_reasons(cohort.registry, update["updateId"])
    assert {k for k, v in recorded.items() if v} == set(excluded)


def test_dry_run_writes_nothing_spends_nothing_and_says_so(cohort: Cohort) -> None:
    before = sorted(p.name for p in cohort.store.main_root.iterdir())
    lines: list[str] = []
    outcome = aggregate(cohort, report=lines.append, dry_run=True)
    assert outcome.dry_run and outcome.update_id is None and outcome.round.privacy_record is None
    assert outcome.summary()["epsilonRound"] > 0  # what a real round would cost, reported ...
    said = "\n".join(lines)
    assert "Nothing is released and no privacy budget is spent" in said and "No verdict on the candidate" in said
    assert outcome.summary()["performanceImprovement"] is None and outcome.summary()["accuracyBefore"] is None
    assert "Planner: " in said  # the planner's view for this population
    assert sorted(p.name for p in cohort.store.main_root.iterdir()) == before
    assert cohort.registry.get_federated_updates() == []
    assert cohort.registry.round_privacy_records() == []  # ... and not spent
    assert _statuses(cohort) == {"1.0.0": ModelVersionStatus.ACTIVE}

    aggregate(cohort, NO_DP, learning_rate=HARMLESS)
    expected = rf"No eligible learners: 0 usable .* {LEARNERS} learner\(s\) who trained .* {LEARNERS} of them already"
    with pytest.raises(NoEligibleLearners, match=expected):
        aggregate(cohort)


def test_dry_run_verdict_is_the_real_runs_verdict(cohort: Cohort) -> None:
    # A harmful server step first: rejected dry and real (a rejected round consumes no sessions) ...
    for rate in (HARMFUL, None):  # ... then the default step, whichever way the gate decides it
        dry = aggregate(cohort, NO_DP, dry_run=True, learning_rate=rate)
        real = aggregate(cohort, NO_DP, learning_rate=rate)
        assert dry.gate == real.gate  # every score, the verdict and its reason
        assert dry.candidate_version == real.candidate_version and dry.status == "DRY_RUN"
        assert real.status == ("PROMOTED" if dry.gate.accepted else "REJECTED")
        assert dry.summary()["wouldPromote"] == real.promoted
    assert not (cohort.store.main_root / "1.1.0").exists()  # the harmful candidate was never written
    [harmful, default] = _by_version(cohort)
    assert harmful["status"] == "REJECTED" and harmful["rejectionReason"].startswith("Performance degradation")
    if default["status"] == "PROMOTED":
        stored = head_state(load_main_model(cohort.store.main_root, "1.2.0")[0])
        for name, value in real.round.candidate_heads.items():
            np.testing.assert_array_equal(stored[name], value)  # the dry run judged exactly this model


def _by_version(cohort: Cohort) -> list[dict]:
    return sorted(cohort.registry.get_federated_updates(), key=lambda u: u["newVersion"])


def test_server_optimizer_state_is_stored_with_the_version_and_carries_over(cohort: Cohort) -> None:
    first = aggregate(cohort, NO_DP, server_optimizer="momentum", learning_rate=HARMLESS)
    assert first.promoted and first.summary()["serverOptimizer"] == "momentum"
    assert SERVER_STATE_NAME in read_manifest(cohort.store.main_root, cohort.store.main_root / "1.1.0")["files"]
    m1 = load_server_state(cohort.store.main_root, "1.1.0", "momentum")
    assert set(m1) == {f"m.{k}" for k in first.round.candidate_heads}
    for key, value in first.round.optimizer_state.items():
        np.testing.assert_array_equal(m1[key], value)
    assert load_server_state(cohort.store.main_root, "1.1.0", "adam") == {}  # another optimizer starts fresh
    assert load_server_state(cohort.store.main_root, "1.0.0", "momentum") == {}  # trained version: no state

    # A week later three learners trained again: the second round starts from the stored momentum.
    again = cohort.learners[:3]
    simulate_activity(cohort.registry, again, week=2)
    for learner_id in again:
        train_learner_locally(cohort.registry, cohort.store, learner_id, epochs=2)
    second = aggregate(cohort, NO_DP, server_optimizer="momentum", learning_rate=HARMLESS)
    m2 = second.round.optimizer_state
    step = np.sqrt(sum(float(np.sum((m2[k] - 0.9 * m1[k]) ** 2)) for k in m1))  # m2 = 0.9 m1 + aggregate
    assert step == pytest.approx(second.round.aggregate_norm, rel=1e-9)
    assert second.summary()["curriculumReference"] == first.summary()["curriculumAccuracyBefore"]  # 1.0.0's

    # The stored state is verified against the manifest like any weight file.
    state_file = cohort.store.main_root / "1.1.0" / SERVER_STATE_NAME
    state_file.write_bytes(state_file.read_bytes()[:-4] + b"\x00\x00\x80\x7f")
    with pytest.raises(ArtifactError, match="hash mismatch"):
        load_server_state(cohort.store.main_root, "1.1.0", "momentum")


def test_the_round_anchors_its_candidate_on_the_curriculum_training_split_and_records_it(cohort: Cohort) -> None:
    active = cohort.registry.get_active_version()
    assert active is not None
    train, val = curriculum_splits(active, cohort.store)
    assert len(train) == 3500 and len(val) == 750  # the main model's own 70/15/15 split of its 5,000 samples
    assert not {s.tobytes() for s in train.features} & {s.tobytes() for s in val.features}

    plain = aggregate(cohort, NO_DP, dry_run=True, anchor=None)
    assert plain.round.curriculum_anchor is None and plain.summary()["curriculumAnchor"] is None
    anchored = aggregate(cohort, NO_DP, dry_run=True)  # on by default
    record = anchored.summary()["curriculumAnchor"]
    assert record == {"samples": 2400, "epochs": 1, "batchSize": 64, "learningRate": 0.005, "seed": 1}
    moved = [not np.array_equal(anchored.round.candidate_heads[k], v) for k, v in plain.round.candidate_heads.items()]
    assert any(moved)  # the judged candidate is the anchored one, not the server step's
    again = aggregate(cohort, NO_DP, dry_run=True)  # the seed is the round's: the same candidate again
    for name, value in anchored.round.candidate_heads.items():
        np.testing.assert_array_equal(again.round.candidate_heads[name], value)

    real = aggregate(cohort, NO_DP)
    [update] = cohort.registry.get_federated_updates()
    assert update["metrics"]["curriculumAnchor"] == record and real.gate == anchored.gate


def test_a_refused_full_step_is_promoted_at_half_the_step_and_recorded(cohort: Cohort) -> None:
    # Double the server rate until the full step is refused: the half step is then the previous
    # rate's full step, which the gate accepted (the same heads, the same anchoring).
    rate = 1e-3
    while rate < HARMFUL:
        dry = aggregate(cohort, NO_DP, dry_run=True, learning_rate=rate)
        if dry.round.step_scale < 1.0 or not dry.gate.accepted:
            break
        rate *= 2
    assert dry.gate.accepted and dry.round.step_scale == 0.5, (rate, dry.gate.reason)
    lines: list[str] = []
    real = aggregate(cohort, NO_DP, report=lines.append, learning_rate=rate)
    assert real.promoted and real.round.step_scale == 0.5 and real.round.learning_rate == rate
    assert "promoted at 0.5 of it" in "\n".join(lines)
    [update] = cohort.registry.get_federated_updates()
    assert update["status"] == "PROMOTED" and update["metrics"]["stepScale"] == 0.5
    stored = head_state(load_main_model(cohort.store.main_root, real.new_version)[0])
    for name, value in real.round.candidate_heads.items():
        np.testing.assert_array_equal(stored[name], value)
