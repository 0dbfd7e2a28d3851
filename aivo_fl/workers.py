"""Past one machine: the Celery executor that sends each step of a launched run to a worker.

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


def build_executor(settings: Settings) -> dg.ExecutorDefinition | None:
    """The Celery executor when a broker is configured, else None (Dagster's default, in-process steps)."""
    if settings.celery_broker_url is None:
        return None
    # Through the environment when it is there, so the UI shows the variable's name, never a password.
    broker: object = (
        {"env": BROKER_VARIABLE} if BROKER_VARIABLE in os.environ else settings.celery_broker_url.get_secret_value()
    )
    return celery_executor.configured(
        {"broker": broker, "backend": broker, "config_source": {"task_default_queue": settings.celery_queue}}
    )
