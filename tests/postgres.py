"""Databases of their own on a real PostgreSQL server, for tests.

The server is AIVO_TEST_POSTGRES_URL (default: this machine's trust-auth server). Locally without a
server the tests that need it skip; in CI (CI=true) an unreachable server fails them, so PostgreSQL
coverage can never silently vanish.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from aivo_fl.config import normalize_database_url

POSTGRES_ADMIN_URL = os.environ.get("AIVO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def admin_engine() -> sa.Engine:
    return sa.create_engine(
        normalize_database_url(POSTGRES_ADMIN_URL), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )


def postgres_or_skip() -> sa.Engine:
    engine = admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        message = f"PostgreSQL not reachable at {engine.url.render_as_string(hide_password=True)}: {exc.orig}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return engine


@contextmanager
def postgres_database(template: str | None = None) -> Iterator[str]:
    """URL (operator's bare `postgresql://` form) of a brand-new database, dropped afterwards: empty,
    or a copy of `template` (which must have no open connection while it is copied)."""
    admin = postgres_or_skip()
    name = f"aivo_fl_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"{copy}'))
    url = sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name, drivername="postgresql")
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
