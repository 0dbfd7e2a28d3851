"""The aggregation lease: one round at a time, whoever started it, and quick recovery from a dead holder.

The holder writes its host (with its PID namespace) and pid, and refreshes a heartbeat every
HEARTBEAT_EVERY while it runs. A lease is free once its heartbeat is older than LEASE_TTL, or at
once when its holder ran on this host and that process no longer exists (SIGKILL, OOM kill, a
crashed CLI run). A live lease is never waited for: the second round is refused at once with one
line naming the holder.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from aivo_fl.registry.base import RegistryBase
from aivo_fl.registry.errors import AggregationInProgress
from aivo_fl.registry.schema import AggregationLock, utcnow

LEASE_NAME = "aggregation"
LEASE_TTL = timedelta(seconds=60)
HEARTBEAT_EVERY = timedelta(seconds=10)

log = logging.getLogger(__name__)


class AggregationLease(RegistryBase):
    @contextmanager
    def aggregation_lock(self, holder: str) -> Iterator[None]:
        """Hold the aggregation lease for the duration of the block (refreshing its heartbeat).

        Dagster's concurrency pool serialises runs it launches; this lease also covers rounds
        started from the command line. Raises AggregationInProgress while another holder is alive.
        """
        me = _Identity(holder, _local_host(), os.getpid())
        self._take_lease(me)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(me, stop), name="aggregation-lease", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            with self._session() as session:
                session.execute(sa.delete(AggregationLock).where(*me.owns()))

    def _take_lease(self, me: _Identity) -> None:
        now = utcnow()
        try:
            with self._session() as session:
                # FOR UPDATE: two takers of one stale lease serialise here (SQLite: BEGIN IMMEDIATE).
                current = session.scalar(
                    sa.select(AggregationLock).where(AggregationLock.name == LEASE_NAME).with_for_update()
                )
                if current is not None and _alive(current, now):
                    raise AggregationInProgress(_describe(current, now))
                if current is not None:
                    log.warning("Taking over the aggregation lease from a dead holder: %s", _describe(current, now))
                    session.delete(current)
                    session.flush()
                session.add(
                    AggregationLock(
                        name=LEASE_NAME, holder=me.holder, host=me.host, pid=me.pid, acquiredAt=now, heartbeatAt=now
                    )
                )
        except IntegrityError:  # another taker inserted first (no row to lock yet)
            with self._session() as session:
                current = session.get(AggregationLock, LEASE_NAME)
            raise AggregationInProgress(
                _describe(current, utcnow()) if current else "Another aggregation round is running"
            ) from None

    def _heartbeat(self, me: _Identity, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_EVERY.total_seconds()):
            try:
                with self._session() as session:
                    refreshed = session.execute(
                        sa.update(AggregationLock).where(*me.owns()).values(heartbeatAt=utcnow())
                    ).rowcount
            except Exception as exc:  # a database blip must not kill the round; the next beat retries
                log.warning("Aggregation lease heartbeat failed: %s", exc)
                continue
            if not refreshed:
                # Taken over (this process stalled past LEASE_TTL): the round's promotion still
                # checks the active version, so a racing round cannot be overwritten.
                log.warning("The aggregation lease of %s was taken over by another round", me.holder)
                return


class _Identity:
    def __init__(self, holder: str, host: str, pid: int) -> None:
        self.holder, self.host, self.pid = holder, host, pid

    def owns(self) -> tuple[sa.ColumnElement[bool], ...]:
        return (
            AggregationLock.name == LEASE_NAME,
            AggregationLock.holder == self.holder,
            AggregationLock.host == self.host,
            AggregationLock.pid == self.pid,
        )


def _alive(lease: AggregationLock, now: datetime) -> bool:
    if now - lease.heartbeatAt > LEASE_TTL:
        return False
    return lease.host != _local_host() or process_running(lease.pid)


def _local_host() -> str:
    """This host, qualified by its PID namespace: two containers sharing a hostname do not see
    each other's pids, so a pid is only checked where it means the same process."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()} {namespace}"


def process_running(pid: int) -> bool:
    """Whether a process with this pid exists on this host and is not a zombie awaiting its parent."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        # /proc/<pid>/stat: "pid (comm) STATE ..."; comm may hold spaces or parentheses.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): os.kill said it exists
    return state not in ("Z", "X")


def _describe(lease: AggregationLock, now: datetime) -> str:
    age = max(0, int((now - lease.heartbeatAt).total_seconds()))
    return (
        f"Another aggregation round is running: {lease.holder} on {lease.host} (pid {lease.pid}), "
        f"since {lease.acquiredAt:%Y-%m-%d %H:%M:%S} UTC, last heartbeat {age} s ago"
    )
