"""The aggregation lease: one round at a time, whoever started it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from aivo_fl.registry.base import AggregationInProgress, RegistryBase
from aivo_fl.registry.schema import AggregationLock, utcnow

LEASE_NAME = "aggregation"


class AggregationLease(RegistryBase):
    @contextmanager
    def aggregation_lock(self, holder: str, *, ttl: timedelta = timedelta(hours=2)) -> Iterator[None]:
        """Hold the aggregation lease for the duration of the block.

        Dagster's concurrency pool serialises runs it launches; this lease also covers rounds
        started from the command line. An expired lease (a crashed holder) is taken over.
        """
        now = utcnow()
        try:
            with self._session() as session:
                session.execute(
                    sa.delete(AggregationLock).where(
                        AggregationLock.name == LEASE_NAME, AggregationLock.expiresAt < now
                    )
                )
                session.add(AggregationLock(name=LEASE_NAME, holder=holder, acquiredAt=now, expiresAt=now + ttl))
        except IntegrityError:
            with self._session() as session:
                current = session.get(AggregationLock, LEASE_NAME)
            who = f"{current.holder} since {current.acquiredAt:%Y-%m-%d %H:%M:%S} UTC" if current else "another run"
            raise AggregationInProgress(f"Another aggregation round is running ({who})") from None
        try:
            yield
        finally:
            with self._session() as session:
                session.execute(
                    sa.delete(AggregationLock).where(
                        AggregationLock.name == LEASE_NAME, AggregationLock.holder == holder
                    )
                )
