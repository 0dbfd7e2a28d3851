"""Runs the command line launches: what they are comes first in their tags, the process that ran
them last, and a run whose process died is released whichever key set tagged it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from aivo_fl.cli.dead_runs import HOST_TAG, PID_TAG, process_tags, release_dead_runs
from aivo_fl.defs.run_tags import BUCKETS_TAG, RUN_TAG, TRIGGER_TAG


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_what_a_run_is_sorts_before_the_process_that_ran_it(instance: dg.DagsterInstance) -> None:
    tags = {RUN_TAG: "training", BUCKETS_TAG: "bucket-0003..bucket-0047", TRIGGER_TAG: "cli", **process_tags()}
    run = create_run_for_test(instance, tags=tags)
    # Dagster stores tags sorted by key and its runs table shows user tags in that order.
    stored = list(instance.get_run_by_id(run.run_id).tags)
    assert stored == sorted(stored)
    assert stored.index(HOST_TAG) > stored.index(TRIGGER_TAG) and stored.index(PID_TAG) > stored.index(RUN_TAG)
    assert stored[-2:] == [HOST_TAG, PID_TAG]


@pytest.mark.parametrize("keys", [(HOST_TAG, PID_TAG), ("aivo/host", "aivo/pid")], ids=["current", "older aivo-fl"])
def test_a_run_whose_process_died_is_released(instance: dg.DagsterInstance, keys: tuple[str, str]) -> None:
    host_key, pid_key = keys
    host = socket.gethostname()
    dead = create_run_for_test(
        instance, status=dg.DagsterRunStatus.STARTED, tags={host_key: host, pid_key: str(_dead_pid())}
    )
    alive = create_run_for_test(instance, status=dg.DagsterRunStatus.STARTED, tags={host_key: host, pid_key: "1"})
    elsewhere = create_run_for_test(
        instance, status=dg.DagsterRunStatus.STARTED, tags={host_key: f"not-{host}", pid_key: str(_dead_pid())}
    )
    assert release_dead_runs(instance) == [dead.run_id]
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    for run in (alive, elsewhere):
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
