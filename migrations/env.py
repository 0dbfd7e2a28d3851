"""Alembic environment for the registry.

The URL comes from `aivo-fl migrate` (config attribute `connection` or option `sqlalchemy.url`),
or from DATABASE_URL when `alembic` is run by hand.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from aivo_fl.registry.database import create_registry_engine
from aivo_fl.registry.schema import ALEMBIC_VERSION_TABLE, SCHEMA_ADDITIONS_TABLE, metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=ALEMBIC_VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=lambda name, type_, _parent: not (type_ == "table" and name == SCHEMA_ADDITIONS_TABLE),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Run by hand (`alembic upgrade head`): the database and the app-table mapping from the settings.
    from aivo_fl.config import load_settings

    settings = load_settings()
    url = config.get_main_option("sqlalchemy.url") or settings.database_url
    config.attributes.setdefault("app_owned_tables", settings.app_learner_table is not None)
    engine = create_registry_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Offline (--sql) migrations are not supported; run `aivo-fl migrate`.")
run_migrations_online()
