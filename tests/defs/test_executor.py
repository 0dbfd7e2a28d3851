"""Without Celery a launched run executes its steps in its own process: no second process per run."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from aivo_fl.config import load_settings
from aivo_fl.definitions import build_definitions
from aivo_fl.registry import ModelRegistry, migrate


def clone_learners_job() -> dg.JobDefinition:
    # Rebuilt from the environment's settings, as a run worker launched by the daemon would.
    return build_definitions(load_settings()).resolve_job_def("clone_learners")


def test_a_launched_run_executes_its_step_in_the_run_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_FEDERATED_LEARNING", "true")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    registry = ModelRegistry(load_settings().database_url)
    migrate(registry.engine)
    with dg.instance_for_test() as instance:
        # execute_job uses the job's own executor (execute_in_process would force the in-process one).
        result = dg.execute_job(dg.reconstructable(clone_learners_job), instance=instance, raise_on_error=False)
        events = instance.all_logs(result.run_id)
    step_starts = [e for e in events if e.dagster_event and e.dagster_event.event_type_value == "STEP_START"]
    assert step_starts and {e.dagster_event.pid for e in step_starts} == {os.getpid()}
    assert not any("multiprocess" in (e.message or "") for e in events)
    registry.engine.dispose()
