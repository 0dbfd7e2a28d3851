"""Run Dagster jobs from the command line on the operator's Dagster instance.

Runs go through the same assets as the UI and land in the same instance (`DAGSTER_HOME`, or
`./.dagster_home` when unset), so the UI shows one history whichever way an operator works.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from aivo_fl.cli.dead_runs import process_tags, release_dead_runs
from aivo_fl.config import Settings
from aivo_fl.defs.retries import EXIT_CODE_KEY
from aivo_fl.operations.errors import EXIT_FAILED, OperationFailed

LOCAL_INSTANCE_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "dagster.local.yaml"


class RunFailed(OperationFailed):
    """A Dagster run failed; the message is the failing step's one line, with its exit code."""


def console_config() -> dict[str, Any]:
    # Progress is echoed as plain lines by the reporter resource and a failure is reported as one
    # line, so Dagster's console logger stays silent unless `--verbose` turned on debug logging.
    level = "DEBUG" if logging.getLogger().isEnabledFor(logging.DEBUG) else "CRITICAL"
    return {"loggers": {"console": {"config": {"log_level": level}}}}


def local_instance() -> dg.DagsterInstance:
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and LOCAL_INSTANCE_TEMPLATE.exists():
        shutil.copyfile(LOCAL_INSTANCE_TEMPLATE, config)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def definitions(settings: Settings) -> dg.Definitions:
    from aivo_fl.definitions import build_definitions

    return build_definitions(settings, echo=True)


def run_job(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job_name: str,
    *,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    release_dead_runs(instance)
    result = defs.resolve_job_def(job_name).execute_in_process(
        run_config={**console_config(), **(run_config or {})},
        instance=instance,
        tags={**(tags or {}), **process_tags()},
        raise_on_error=False,
    )
    if not result.success:
        raise failure_of(result) or RunFailed(f"Dagster run {result.run_id} of {job_name} failed")
    return result


def failure_of(result: dg.ExecuteInProcessResult) -> RunFailed | None:
    """The run's one line and exit code: a failed blocking check's own description (the gate's
    "Performance degradation: ..."), else the failing step's (exit code set by `defs.retries`, else 1)."""
    from aivo_fl.defs.alerting import step_failure_reason

    events = result.all_events
    for event in events:
        if event.event_type_value != "ASSET_CHECK_EVALUATION":
            continue
        evaluation = event.asset_check_evaluation_data
        if evaluation.blocking and not evaluation.passed and evaluation.description:
            return RunFailed(evaluation.description)
    line = step_failure_reason(events)
    return RunFailed(line, _exit_code(events)) if line else None


def _exit_code(events: list[dg.DagsterEvent]) -> int:
    for event in events:
        if event.event_type_value == "STEP_FAILURE":
            user = event.step_failure_data.user_failure_data
            code = user.metadata.get(EXIT_CODE_KEY) if user is not None else None
            return int(code.value) if code is not None else EXIT_FAILED
    return EXIT_FAILED
