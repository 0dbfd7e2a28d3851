"""Runs of the command line's local Dagster instance whose process died.

The CLI executes runs in its own process, and its local instance has no daemon, so nothing
notices a SIGKILLed run: it stays STARTED and keeps its `aggregation` pool slot, and the next
round would wait for that slot forever. Every CLI run is tagged with its process id and host;
before launching, runs of this host whose process is gone are marked failed and their pool
slots freed, and a round that still finds the pool taken by a live run says so and exits.
"""

from __future__ import annotations

import os
import socket

import dagster as dg

from aivo_fl.registry import AggregationInProgress

# The registry lease's own liveness test (a zombie awaiting its parent counts as gone).
from aivo_fl.registry.lock import process_running

# Under `aivo_cli/`, which sorts after the `aivo/` tags that say what a run is (`defs/run_tags.py`).
PID_TAG = "aivo_cli/pid"
HOST_TAG = "aivo_cli/host"
# The keys an older aivo-fl tagged its runs with: a run it left behind is released as well.
PROCESS_TAG_KEYS = [(HOST_TAG, PID_TAG), ("aivo/host", "aivo/pid")]
IN_PROGRESS = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def process_tags() -> dict[str, str]:
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def release_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark this host's CLI runs whose process is gone as failed and free their pool slots."""
    host = socket.gethostname()
    released = []
    for host_key, pid_key in PROCESS_TAG_KEYS:
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS, tags={host_key: host})):
            pid = int(run.tags.get(pid_key, "0"))
            if pid <= 0 or pid == os.getpid() or process_running(pid):
                continue
            instance.report_run_failed(run, message=f"Process {pid} on {host} died; marked failed by aivo-fl")
            released.append(run.run_id)
    storage = instance.event_log_storage
    # Also slots of runs that ended without giving them back (what run monitoring would free).
    for run_id in storage.get_concurrency_run_ids():
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            storage.free_concurrency_slots_for_run(run_id)
    return released


def require_free_slot(instance: dg.DagsterInstance, pool: str) -> None:
    """Refuse at once (one line, exit 5) instead of waiting for a slot a live run holds."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    if info.limit is not None and len(info.claimed_slots) >= info.limit:
        holders = ", ".join(sorted(info.active_run_ids))
        raise AggregationInProgress(f"Another aggregation round is running: Dagster run {holders}")
