"""Secrets reach Dagster only as `EnvVar` references, never as values.

Resource config is stored in Dagster's run storage (every run's job snapshot) and shown in the
UI, so a value bound there is a password written to disk. A secret (`ALERT_WEBHOOK_URL`, and
`DATABASE_URL` when it carries a password) is bound as `EnvVar(<its variable>)` however it was
configured: from the environment, from `.env` (read by pydantic-settings, not into the process
environment) or as an override; in the last two cases the process environment is given the
value so the reference resolves when a step or sensor opens the resource.
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import SecretStr

from aivo_fl.config import Settings

DATABASE_URL_VARIABLE = "DATABASE_URL"


def secret_reference(variable: str, value: SecretStr | str | None) -> dg.EnvVar | None:
    if value is None:
        return None
    plain = value.get_secret_value() if isinstance(value, SecretStr) else value
    if os.environ.get(variable) != plain:
        os.environ[variable] = plain
    return dg.EnvVar(variable)


def database_url_reference(settings: Settings) -> str | dg.EnvVar:
    url = settings.database_url
    if os.environ.get(DATABASE_URL_VARIABLE) != url and settings.sqlalchemy_url.password is None:
        return url  # nothing secret in it (SQLite, trust or peer authentication)
    return secret_reference(DATABASE_URL_VARIABLE, url) or url
