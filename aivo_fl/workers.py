"""Where a launched run's steps execute: in the run's own process, or past one machine on Celery workers.

Without `CELERY_BROKER_URL` every run executes its steps in its own process (Dagster's in-process
executor): the run launcher's one process per run, no second process per step importing torch and
Dagster again. A run's few steps (cloning or training one range of buckets, or a round and its
checks) gain nothing from running side by side; the sensors' runs do (two at most per tick).

With `CELERY_BROKER_URL` set, the runs Dagster launches (sensors, the schedule, the UI) are
orchestrated where they start and every step executes on whichever Celery worker takes it from
`CELERY_QUEUE`. A worker rebuilds the job from this code location (`aivo_fl.definitions`, with its
own environment: the same settings on every host), reaches Dagster's instance through the run's
instance reference (so the instance must be shared: `deploy/dagster.yaml`, PostgreSQL) and reads
and writes models under the store paths (so those must be one filesystem every host mounts at the
same path: the registry records absolute paths). No step hands data to another through Dagster's
IO manager, so no step needs the host-local storage of the run that launched it.
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_celery import celery_executor

from aivo_fl.config import Settings

BROKER_VARIABLE = "CELERY_BROKER_URL"


def build_executor(settings: Settings) -> dg.ExecutorDefinition:
    """The Celery executor when a broker is configured, else the in-process executor."""
    if settings.celery_broker_url is None:
        return dg.in_process_executor
    # Through the environment when it is there, so the UI shows the variable's name, never a password.
    broker: object = (
        {"env": BROKER_VARIABLE} if BROKER_VARIABLE in os.environ else settings.celery_broker_url.get_secret_value()
    )
    return celery_executor.configured(
        {"broker": broker, "backend": broker, "config_source": {"task_default_queue": settings.celery_queue}}
    )
