"""Run Dagster jobs from the command line on the operator's Dagster instance.

Runs go through the same assets as the UI and land in the same instance (`DAGSTER_HOME`, or
`./.dagster_home` when unset), so the UI shows one history whichever way an operator works.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from aivo_fl.config import Settings

LOCAL_INSTANCE_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "dagster.local.yaml"
# Progress is echoed as plain lines by the reporter resource; Dagster's console logger only speaks on errors.
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


class RunFailed(Exception):
    """A Dagster run failed; the message is the failing step's own description."""


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
    result = defs.resolve_job_def(job_name).execute_in_process(
        run_config={**QUIET, **(run_config or {})}, instance=instance, tags=tags, raise_on_error=False
    )
    if not result.success:
        raise RunFailed(failure_description(result) or f"Dagster run {result.run_id} of {job_name} failed")
    return result


def failure_description(result: dg.ExecuteInProcessResult) -> str | None:
    from aivo_fl.defs.alerting import step_failure_reason

    return step_failure_reason(result.all_events)


def apply_sensor_result(
    defs: dg.Definitions, instance: dg.DagsterInstance, sensor_name: str, cursor: str | None
) -> tuple[list[dg.RunRequest], str | None, str | None]:
    """Tick a sensor as the daemon would: apply its partition requests, return its run requests."""
    sensor = defs.resolve_sensor_def(sensor_name)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        data = sensor.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return list(data.run_requests or []), data.cursor, data.skip_message
