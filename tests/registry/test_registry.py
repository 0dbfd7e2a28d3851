"""ModelRegistry on SQLite and PostgreSQL: shapes AIVO's dashboard reads, atomic promotion, queries."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from aivo_fl.ml.round.status import RoundStatus
from aivo_fl.registry import (
    AggregationInProgress,
    ContributionInput,
    ErasureReport,
    FederatedUpdateInput,
    ModelRegistry,
    PromotionConflict,
    RegistryError,
    TrainingSessionInput,
    lock,
)
from aivo_fl.registry.lock import LEASE_TTL
from aivo_fl.registry.schema import AggregationLock, ModelVersionStatus, metadata
from tests.app_side import contribution_reasons, delete_learner_in_app

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _session(learner_id: str, completed_at: datetime, *, version: str = "1.0.0") -> TrainingSessionInput:
    return TrainingSessionInput(
        learner_id=learner_id,
        source_version=version,
        rebased_from=None,
        samples=150,
        epochs=5,
        loss_before=1.2,
        accuracy_before=0.5,
        loss_after=0.9,
        accuracy_after=0.62,
        delta_norm=0.3,
        delta_path=f"models/learners/{learner_id}/delta.safetensors",
        started_at=completed_at - timedelta(seconds=2),
        completed_at=completed_at,
    )


def _update(contributions: list[ContributionInput], **overrides: object) -> FederatedUpdateInput:
    fields: dict[str, object] = dict(
        base_version="1.0.0",
        new_version=None,
        status=RoundStatus.PROMOTED,
        strategy="fedavg",
        learning_rate=1.0,
        contributions=contributions,
        performance_improvement=1.5,
        accuracy_before=0.6,
        accuracy_after=0.615,
        dp_enabled=True,
        noise_multiplier=0.1,
        clip_norm=1.0,
        sample_rate=1.0,
        epsilon_round=500.0,
        epsilon_total=500.0,
        privacy_delta=1e-5,
    )
    fields.update(overrides)
    return FederatedUpdateInput(**fields)  # type: ignore[arg-type]


EMPTY_STATISTICS = {
    "totalMainVersions": 0,
    "totalLearnerModels": 0,
    "activeLearnerModels": 0,
    "totalFederatedUpdates": 0,
    "totalTrainingSessions": 0,
}


def test_empty_statistics_are_zeros(registry: ModelRegistry) -> None:
    assert registry.get_statistics() == EMPTY_STATISTICS
    assert registry.get_federated_updates() == []
    assert registry.get_active_version() is None


def test_statistics_and_history_shapes(registry: ModelRegistry) -> None:
    registry.register_main_version("1.0.0", "models/main-aivo/1.0.0", {"validationAccuracy": 0.8})
    for i in range(3):
        registry.add_learner(f"learner-{i}", baseline_completed_at=NOW)
        registry.register_personalized_model(f"learner-{i}", {"federatedLearning": True, "sourceVersion": "1.0.0"})
        registry.record_training_session(_session(f"learner-{i}", NOW))
    delete_learner_in_app(registry, "learner-2")
    update_id = registry.record_federated_update(
        _update(
            [
                ContributionInput("learner-0", 1.0, 0.3, False, None),
                ContributionInput("learner-1", 0.5, 1.7, True, None),
                ContributionInput("learner-9", 0.0, None, False, "delta file missing"),
            ]
        )
    )
    assert registry.get_statistics() == {
        "totalMainVersions": 1,
        "totalLearnerModels": 3,
        "activeLearnerModels": 2,
        "totalFederatedUpdates": 1,
        "totalTrainingSessions": 3,
    }
    [update] = registry.get_federated_updates()
    assert update["updateId"] == update_id
    assert update["contributingLearners"] == ["learner-0", "learner-1"]
    assert update["aggregationStrategy"] == "fedavg"
    assert update["performanceImprovement"] == pytest.approx(1.5)
    assert datetime.fromisoformat(update["aggregatedAt"]).tzinfo is not None
    assert contribution_reasons(registry, update_id) == {
        "learner-0": None,
        "learner-1": None,
        "learner-9": "delta file missing",
    }


def test_promotion_deprecates_previous_and_checks_expected_active(registry: ModelRegistry) -> None:
    registry.register_main_version("1.0.0", "p/1.0.0", {})
    registry.register_main_version("1.1.0", "p/1.1.0", {}, parent_version="1.0.0")
    statuses = {v.version: v.status for v in registry.list_main_versions()}
    assert statuses == {"1.0.0": ModelVersionStatus.DEPRECATED, "1.1.0": ModelVersionStatus.ACTIVE}
    # A candidate built on 1.0.0 is stale now: promoting it must not clobber 1.1.0.
    registry.register_main_version("1.2.0", "p/1.2.0", {}, parent_version="1.0.0", activate=False)
    with pytest.raises(PromotionConflict):
        registry.promote("1.2.0", expected_active="1.0.0")
    assert registry.get_active_version().version == "1.1.0"
    with pytest.raises(RegistryError, match="already registered"):
        registry.register_main_version("1.1.0", "p", {})


def test_promoted_round_registers_and_promotes_in_one_transaction(registry: ModelRegistry) -> None:
    registry.register_main_version("1.0.0", "p/1.0.0", {})
    contributions = [ContributionInput("a", 1.0, 0.2, False, None, training_session_id=7)]
    registry.record_federated_update(_update(contributions, new_version="1.1.0", new_version_path="p/1.1.0"))
    assert registry.get_active_version().version == "1.1.0"

    # A round built on 1.0.0 (no longer active) loses, and leaves no trace: no version, no update.
    with pytest.raises(PromotionConflict):
        registry.record_federated_update(_update(contributions, new_version="1.2.0", new_version_path="p"))
    assert [v.version for v in registry.list_main_versions()] == ["1.0.0", "1.1.0"]
    assert len(registry.get_federated_updates()) == 1

    registry.record_federated_update(
        _update(
            contributions,
            base_version="1.1.0",
            new_version="1.2.0",
            status=RoundStatus.REJECTED,
            rejection_reason="Performance degradation: -3.0 points",
        )
    )
    statuses = {v.version: v.status for v in registry.list_main_versions()}
    assert statuses["1.2.0"] == ModelVersionStatus.REJECTED
    assert registry.get_active_version().version == "1.1.0"
    assert registry.get_federated_updates()[-1]["rejectionReason"].startswith("Performance degradation")


def test_concurrent_promotions_leave_exactly_one_active(registry: ModelRegistry) -> None:
    registry.register_main_version("1.0.0", "p/1.0.0", {})
    candidates = [f"1.{i}.0" for i in range(1, 9)]
    for version in candidates:
        registry.register_main_version(version, f"p/{version}", {}, parent_version="1.0.0", activate=False)
    barrier = threading.Barrier(len(candidates))
    winners: list[str] = []
    losers: list[str] = []

    def race(version: str) -> None:
        barrier.wait()
        try:
            registry.promote(version, expected_active="1.0.0")
            winners.append(version)
        except PromotionConflict:
            losers.append(version)

    threads = [threading.Thread(target=race, args=(v,)) for v in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1, (winners, losers)
    assert len(losers) == len(candidates) - 1
    active = [v for v in registry.list_main_versions() if v.status == ModelVersionStatus.ACTIVE]
    assert [v.version for v in active] == winners


def test_database_refuses_a_second_active_row(registry: ModelRegistry) -> None:
    """The single-active index is the last line of defence, even against raw SQL."""
    registry.register_main_version("1.0.0", "p", {})
    with pytest.raises(sa.exc.IntegrityError), registry.engine.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO "MainModelVersion" (version, status, "modelPath", metrics, "createdAt") '
                "VALUES ('9.9.9', 'ACTIVE', 'x', '{}', CURRENT_TIMESTAMP)"
            )
        )


def test_activation_guide_sql_finds_the_personalized_model(registry: ModelRegistry) -> None:
    metadata = {
        "federatedLearning": True,
        "clonedModelPath": "./models/learners/learner-abc",
        "sourceVersion": "1.0.0",
        "architecture": {"totalLayers": 9, "frozenLayers": 3, "trainableLayers": 6},
    }
    registry.register_personalized_model("learner-abc", metadata)
    with registry.engine.connect() as conn:
        # Verbatim from the activation guide (step 5), learner id filled in.
        guide_sql = """SELECT * FROM "PersonalizedModel" WHERE "learnerId" = 'learner-abc';"""
        rows = conn.execute(sa.text(guide_sql)).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    assert row["baseModel"] == "aivo-super-model-v1"  # the guide's record
    assert row["status"] == "ACTIVE"
    stored = row["metadata"] if isinstance(row["metadata"], dict) else json.loads(row["metadata"])
    assert stored == metadata


def test_eligibility_window_takes_each_learners_latest_session(registry: ModelRegistry) -> None:
    for learner in ("a", "b", "c", "d"):
        registry.add_learner(learner, baseline_completed_at=NOW)
    registry.record_training_session(_session("a", NOW - timedelta(days=10)))
    registry.record_training_session(_session("a", NOW - timedelta(days=1), version="1.1.0"))
    registry.record_training_session(_session("b", NOW - timedelta(days=3)))
    registry.record_training_session(_session("c", NOW - timedelta(days=8)))
    registry.record_training_session(_session("d", NOW - timedelta(hours=1)))
    delete_learner_in_app(registry, "d")
    eligible = registry.get_eligible_for_aggregation(7, now=NOW)
    assert [(e.learner_id, e.source_version) for e in eligible] == [("a", "1.1.0"), ("b", "1.0.0")]
    assert eligible[0].improvement == pytest.approx(0.12)
    assert [e.learner_id for e in registry.get_eligible_for_aggregation(14, now=NOW)] == ["a", "b", "c"]


def test_learners_needing_a_model_page_with_a_cursor(registry: ModelRegistry) -> None:
    for i in range(5):
        registry.add_learner(f"l{i}", baseline_completed_at=NOW)
    registry.add_learner("no-baseline", baseline_completed_at=None)
    registry.register_personalized_model("l1", {"federatedLearning": True})
    registry.register_personalized_model("l2", {})  # a row from before activation: still to be cloned
    delete_learner_in_app(registry, "l3")
    assert registry.learners_needing_model() == ["l0", "l2", "l4"]
    assert registry.learners_needing_model(limit=2) == ["l0", "l2"]
    assert registry.learners_needing_model(after="l2") == ["l4"]
    assert registry.deleted_learner_ids() == ["l3"]


def test_interactions_round_trip_exactly(registry: ModelRegistry) -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(40, 256)).astype(np.float32)
    targets = {
        "difficulty": rng.integers(0, 5, 40),
        "modality": rng.integers(0, 4, 40),
        "success": rng.integers(0, 2, 40),
    }
    registry.add_learner("l", baseline_completed_at=NOW)
    assert registry.add_interactions("l", features, targets) == 40
    loaded = registry.get_interactions("l")
    np.testing.assert_array_equal(loaded.features, features)
    for head, values in targets.items():
        np.testing.assert_array_equal(loaded.targets[head], values)
    with pytest.raises(RegistryError, match="Unknown learner"):
        registry.add_interactions("ghost", features, targets)
    with pytest.raises(RegistryError, match="shape"):
        registry.add_interactions("l", features[:, :10], targets)


def test_privacy_ledger_records_what_each_round_used_and_whom_it_charged(registry: ModelRegistry) -> None:
    first = registry.record_federated_update(
        _update([ContributionInput("a", 1, 0.1, False, None), ContributionInput("b", 0, None, False, "stale")])
    )
    sampled = registry.record_federated_update(
        _update(
            [
                ContributionInput("a", 1, 0.1, False, None, charged=True),
                ContributionInput("b", 0, None, False, "not sampled this round", charged=True),
                ContributionInput("c", 0, None, False, "privacy budget spent", charged=False),
            ],
            noise_multiplier=1.0,
            clip_norm=0.8,
            sample_rate=0.1,
            privacy_delta=1e-6,
            eligible_population=30,
            dp_denominator=3.0,
            clip_target_quantile=0.5,
            quantile_noise_multiplier=0.3,
            clip_quantile_estimate=0.62,
        )
    )
    off = registry.record_federated_update(
        _update([ContributionInput("b", 1, 0.1, False, None)], dp_enabled=False, noise_multiplier=None)
    )
    records = registry.round_privacy_records()
    assert [r["updateId"] for r in records] == [first, sampled, off]
    assert records[1]["privacy"] == {
        "dpEnabled": True,
        "noiseMultiplier": 1.0,
        "clipNorm": 0.8,
        "sampleRate": 0.1,
        "eligiblePopulation": 30,
        "denominator": 3.0,
        "delta": 1e-6,
        "clipTargetQuantile": 0.5,
        "quantileNoiseMultiplier": 0.3,
        "clipQuantileEstimate": 0.62,
        "gateNoiseMultiplier": None,  # a round recorded without the private gate
    }
    assert records[2]["privacy"]["dpEnabled"] is False  # a round without noise is recorded, not dropped
    # charged: the population (sampled or not), never those left out before sampling
    assert registry.learner_charged_rounds() == {"a": [first, sampled], "b": [sampled, off]}
    assert registry.learner_charged_rounds(["b"]) == {"b": [sampled, off]}
    history = registry.get_federated_updates()
    assert [h["chargedLearners"] for h in history] == [["a"], ["a", "b"], ["b"]]
    assert [h["privacy"] for h in history] == [r["privacy"] for r in records]


def test_aggregation_lock_is_exclusive_and_released(registry: ModelRegistry) -> None:
    with (
        registry.aggregation_lock("run-1"),
        pytest.raises(AggregationInProgress, match=r"run-1 on .* \(pid \d+\)"),
        registry.aggregation_lock("run-2"),
    ):
        pass
    with registry.aggregation_lock("run-3"):
        pass
    with registry.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(AggregationLock)) == 0


HOLD_LEASE = """
import sys, time
from aivo_fl.registry import ModelRegistry
registry = ModelRegistry(sys.argv[1])
with registry.aggregation_lock("doomed-run"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_lease_of_a_killed_holder_is_taken_over_and_a_live_one_is_not(
    registry: ModelRegistry, database_url: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LEASE, database_url], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        # Alive in another process: refused at once, with the holder named in one line.
        with pytest.raises(AggregationInProgress) as refused, registry.aggregation_lock("next-run"):
            pass
        assert f"doomed-run on {socket.gethostname()}" in str(refused.value)
        assert f"(pid {holder.pid})" in str(refused.value)
        assert "\n" not in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Killed: its lease is free at once, no TTL to wait out.
    with registry.aggregation_lock("next-run"):
        pass


def _plant_lease(registry: ModelRegistry, *, host: str, heartbeat_age: timedelta) -> None:
    now = datetime.now(UTC)
    with registry.engine.begin() as conn:
        conn.execute(
            sa.insert(AggregationLock).values(
                name="aggregation", holder="far-run", host=host, pid=1, acquiredAt=now, heartbeatAt=now - heartbeat_age
            )
        )


def test_lease_on_another_host_is_free_once_its_heartbeat_is_stale(registry: ModelRegistry) -> None:
    _plant_lease(registry, host="other-host", heartbeat_age=timedelta(seconds=5))
    with pytest.raises(AggregationInProgress, match="far-run on other-host"), registry.aggregation_lock("next-run"):
        pass
    with registry.engine.begin() as conn:
        conn.execute(sa.delete(AggregationLock))
    _plant_lease(registry, host="other-host", heartbeat_age=LEASE_TTL + timedelta(seconds=1))
    with registry.aggregation_lock("next-run"):
        pass


def test_holder_refreshes_its_heartbeat(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock, "HEARTBEAT_EVERY", timedelta(milliseconds=50))
    with registry.aggregation_lock("long-run"):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with registry.engine.connect() as conn:
                acquired, beat = conn.execute(sa.select(AggregationLock.acquiredAt, AggregationLock.heartbeatAt)).one()
            if beat > acquired:
                break
            time.sleep(0.05)
        assert beat > acquired


@pytest.mark.parametrize("bad", ["a\x00b", "x" * 129, "../escape", ""])
def test_bad_learner_ids_are_refused_before_the_database(registry: ModelRegistry, bad: str) -> None:
    features = np.zeros((1, 256), dtype=np.float32)
    calls = [
        lambda: registry.add_learner(bad, baseline_completed_at=NOW),
        lambda: registry.add_interactions(bad, features, {"difficulty": [0], "modality": [0], "success": [0]}),
        lambda: registry.get_interactions(bad),
        lambda: registry.register_personalized_model(bad, {}),
        lambda: registry.get_personalized_model(bad),
        lambda: registry.delete_personalized_model(bad),
        lambda: registry.record_training_session(_session(bad, NOW)),
        lambda: registry.record_federated_update(_update([ContributionInput(bad, 1.0, 0.1, False, None)])),
        lambda: registry.learner_charged_rounds([bad]),
    ]
    for call in calls:
        with pytest.raises(RegistryError, match=r"^Refused learner id: "):
            call()
    assert registry.get_statistics() == EMPTY_STATISTICS
    assert registry.count_learners() == 0


def test_eligible_counts_only_sessions_a_round_would_use(registry: ModelRegistry) -> None:
    sessions = {}
    for learner in ("a", "b", "c", "d"):
        registry.add_learner(learner, baseline_completed_at=NOW)
        sessions[learner] = registry.record_training_session(_session(learner, NOW - timedelta(days=1)))
    registry.record_federated_update(
        _update(
            [
                ContributionInput("a", 1.0, 0.2, False, None, training_session_id=sessions["a"]),
                ContributionInput("b", 0.0, None, False, "not safetensors", training_session_id=sessions["b"]),
            ]
        )
    )
    rejected = [ContributionInput("c", 1.0, 0.2, False, None, training_session_id=sessions["c"])]
    registry.record_federated_update(_update(rejected, status=RoundStatus.REJECTED))
    # a went into a promoted version; b was left out and c only fed a rejected round: both count.
    assert [e.learner_id for e in registry.get_eligible_for_aggregation(7, now=NOW)] == ["b", "c", "d"]
    assert registry.count_already_aggregated(7, now=NOW) == 1
    # A new session of a is fresh again.
    registry.record_training_session(_session("a", NOW - timedelta(hours=1)))
    assert [e.learner_id for e in registry.get_eligible_for_aggregation(7, now=NOW)] == ["a", "b", "c", "d"]
    assert registry.count_already_aggregated(7, now=NOW) == 0


ERASED = "erase-me"
ID_PATTERN = re.compile(r"(?<![A-Za-z0-9._-])erase-me(?![A-Za-z0-9._-])")


def _all_rows_as_text(registry: ModelRegistry) -> str:
    with registry.engine.connect() as conn:
        return "\n".join(repr(tuple(row)) for table in metadata.sorted_tables for row in conn.execute(sa.select(table)))


def _learner_with_history(registry: ModelRegistry, learner_id: str) -> int:
    rng = np.random.default_rng(0)
    registry.add_learner(learner_id, baseline_completed_at=NOW)
    targets = {head: rng.integers(0, 2, 5) for head in ("difficulty", "modality", "success")}
    registry.add_interactions(learner_id, rng.normal(size=(5, 256)).astype(np.float32), targets)
    registry.register_personalized_model(learner_id, {"clonedModelPath": f"./models/learners/{learner_id}"})
    registry.record_training_session(_session(learner_id, NOW - timedelta(days=2)))
    return registry.record_training_session(_session(learner_id, NOW - timedelta(days=1)))


def test_erasure_leaves_no_row_with_the_learners_id(registry: ModelRegistry) -> None:
    # "erase-me-too" contains the erased id as a prefix: it must survive untouched.
    sessions = {learner: _learner_with_history(registry, learner) for learner in (ERASED, "erase-me-too")}
    registry.register_main_version("1.0.0", "p/1.0.0", {})
    for round_number in range(2):
        contributions = [
            ContributionInput(learner, 1.0, 0.2, False, None, training_session_id=sessions[learner])
            for learner in (ERASED, "erase-me-too")
        ]
        if round_number == 1:
            contributions[0] = ContributionInput(
                ERASED, 0.0, None, False, f"missing file models/learners/{ERASED}/delta.safetensors"
            )
        registry.record_federated_update(
            _update(contributions, metrics={"learnerEpsilons": {ERASED: 3.0, "erase-me-too": 3.0}})
        )
    ledger_before = registry.learner_charged_rounds()
    assert ID_PATTERN.search(_all_rows_as_text(registry))

    report = registry.erase_learner(ERASED, "a-long-erasure-key-for-tests")

    assert report.pseudonym.startswith("erased-") and ERASED not in report.pseudonym
    assert (report.interactions, report.training_sessions, report.personalized_models, report.learner_rows) == (
        5,
        2,
        1,
        1,
    )
    assert (report.contributions_pseudonymized, report.rounds_rewritten) == (2, 2)
    assert not ID_PATTERN.search(_all_rows_as_text(registry))
    # The audit trail and the privacy ledger keep their charge, under the pseudonym.
    ledger_after = registry.learner_charged_rounds()
    assert ledger_after[report.pseudonym] == ledger_before[ERASED]
    assert ledger_after["erase-me-too"] == ledger_before["erase-me-too"]
    expected = [[report.pseudonym, "erase-me-too"], ["erase-me-too"]]
    for key in ("contributingLearners", "chargedLearners"):
        assert [u[key] for u in registry.get_federated_updates()] == expected
    assert registry.get_interactions("erase-me-too").features.shape == (5, 256)
    assert registry.get_personalized_model("erase-me-too") is not None
    # Same key, same pseudonym; running it again changes nothing.
    again = registry.erase_learner(ERASED, "a-long-erasure-key-for-tests")
    assert again == ErasureReport(report.pseudonym, 0, 0, 0, 0, 0, 0)
    with pytest.raises(RegistryError, match="AIVO_ERASURE_KEY"):
        registry.erase_learner("erase-me-too", "")
