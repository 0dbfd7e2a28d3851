"""SIGKILL at chosen points of training, cloning and aggregation; the next run recovers by itself."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from aivo_fl.registry import ModelRegistry
from tests.faults.conftest import SMALL, TIMEOUT, RunCli, killed_at


def _stats(database_url: str) -> dict[str, int]:
    registry = ModelRegistry(database_url)
    try:
        return registry.get_statistics()
    finally:
        registry.engine.dispose()


# SQLite only: nothing of the registry is in flight at this kill (the model is saved, not yet registered);
# a round killed holding its PostgreSQL lease is tests/registry/test_registry.py's.
@pytest.mark.parametrize("backend", ["sqlite"])
def test_kill_between_saving_and_registering_the_first_model(
    run_cli: RunCli, database_url: str, tmp_path: Path
) -> None:
    env = {**SMALL, "DATABASE_URL": database_url}
    assert run_cli("migrate", env=env).returncode == 0
    killed_at(run_cli, "✓ Model saved to", "train-main-model", env=env)
    assert (tmp_path / "models" / "main-aivo" / "1.0.0").is_dir()  # saved, never registered
    assert _stats(env["DATABASE_URL"])["totalMainVersions"] == 0
    # A writer killed mid-write leaves a staging folder; an old one is removed, a fresh one kept
    # (it may belong to a live writer).
    old = tmp_path / "models" / "main-aivo" / ".1.1.0.tmp-deadbeef"
    fresh = tmp_path / "models" / "learners" / ".learner-000001.tmp-cafe"
    for staging in (old, fresh):
        staging.mkdir(parents=True)
        (staging / "model.safetensors").write_bytes(b"half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    again = run_cli("train-main-model", env=env, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr
    assert "saved but never registered" in again.stdout
    assert "✓ Registered version 1.0.0" in again.stdout
    assert not old.exists() and fresh.exists()
    assert _stats(env["DATABASE_URL"])["totalMainVersions"] == 1


def test_kill_during_cloning_leaves_no_learner_stranded(run_cli: RunCli, sqlite_url: str) -> None:
    env = {**SMALL, "DATABASE_URL": sqlite_url}
    # The demo adds 5 learners, ticks the sensor (partitions added) and dies as cloning starts.
    killed_at(run_cli, "Cloning ", "demo", "--learners", "5", "--rounds", "1", env=env)
    stats = _stats(env["DATABASE_URL"])
    assert stats["totalLearnerModels"] == 0

    # The next demo adds 5 more learners; the 5 stranded ones are asked for again, not forgotten.
    again = run_cli("demo", "--learners", "5", "--rounds", "1", env=env, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr
    assert _stats(env["DATABASE_URL"])["totalLearnerModels"] == 10


def test_kill_mid_aggregation_frees_the_pool_slot_and_the_next_round_runs(
    run_cli: RunCli, sqlite_url: str, tmp_path: Path
) -> None:
    env = {**SMALL, "DATABASE_URL": sqlite_url}
    # Killed after validating the candidate: the registry lease and the `aggregation` slot are held.
    killed_at(run_cli, "Validation:", "demo", "--learners", "4", "--rounds", "1", env=env)
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "dagster_home"))) as instance:
        assert instance.event_log_storage.get_concurrency_info("aggregation").claimed_slots

    started = time.monotonic()
    again = run_cli("run-federated-aggregation", env=env, timeout=TIMEOUT)
    # The learners' updates were never used, so the round runs: promoted (0) or rejected by the gate (1).
    assert again.returncode in (0, 1), again.stderr
    assert "Validation:" in again.stdout, again.stderr
    # The registry says it took over the dead run's lease; beyond that, at most the round's own line.
    notices = [line for line in again.stderr.splitlines() if line.startswith("Taking over the aggregation lease")]
    assert len(notices) == 1, again.stderr
    assert len(again.stderr.splitlines()) <= 2, again.stderr
    assert _stats(env["DATABASE_URL"])["totalFederatedUpdates"] == 1
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "dagster_home"))) as instance:
        killed = [r for r in instance.get_runs() if r.job_name == "federated_aggregation"][-1]
        assert killed.status == dg.DagsterRunStatus.FAILURE  # the dead run is marked failed
        assert not instance.event_log_storage.get_concurrency_info("aggregation").claimed_slots
    assert time.monotonic() - started < TIMEOUT
