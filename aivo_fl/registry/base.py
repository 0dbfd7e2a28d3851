"""Connection, transactions and refusals shared by every part of the registry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from aivo_fl.ml.store.learner_ids import InvalidLearnerId, validate_learner_id
from aivo_fl.registry.app_tables import AppTables
from aivo_fl.registry.database import create_registry_engine, current_revision, head_revision, unavailable
from aivo_fl.registry.errors import RefusedLearnerId, RegistryError


def checked_learner_id(learner_id: str) -> str:
    """Refuse a bad id with one clear line before any driver sees it (PostgreSQL rejects NUL and
    over-long strings with raw errors; the learner store would treat it as a path)."""
    try:
        return validate_learner_id(learner_id)
    except InvalidLearnerId as exc:
        raise RefusedLearnerId(f"Refused learner id: {exc}") from None


class RegistryBase:
    """The engine and one-transaction sessions every registry concern builds on."""

    def __init__(self, database_url: str, engine: Engine | None = None, *, app_tables: AppTables | None = None) -> None:
        self.engine = engine or create_registry_engine(database_url)
        # Learners and interactions: aivo-fl's own tables (the demo) or the app's (APP_*_TABLE).
        self.app = app_tables or AppTables.own()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """One transaction; commits on success. Connection failures become DatabaseUnavailable."""
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            if _is_connection_error(exc):
                raise unavailable(self.engine.url, exc) from None
            raise

    def check_connection(self) -> None:
        with self._session() as session:
            session.execute(sa.text("SELECT 1"))

    def require_current_schema(self) -> None:
        """Refuse to work on a database that `aivo-fl migrate` has not brought to head, or whose
        mapped app tables are not there."""
        try:
            current = current_revision(self.engine)
        except OperationalError as exc:
            raise unavailable(self.engine.url, exc) from None
        head = head_revision()
        if current != head:
            raise RegistryError(
                f"The registry schema is at revision {current or 'none'}, expected {head}: run `aivo-fl migrate`"
            )
        with self.engine.connect() as conn:
            self.app.verify(conn)


def _is_connection_error(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    markers = (
        "could not connect",
        "connection refused",
        "could not translate host",
        "timeout expired",
        "server closed the connection",
        "unable to open database file",
        "no route to host",
        "name or service not known",
        "connection to server",
    )
    return exc.connection_invalidated or any(m in text for m in markers)
