"""Secrets reach Dagster only as `EnvVar` references, never as values.

Resource config is stored in Dagster's run storage (every run's job snapshot) and shown in the
UI, so a value bound there is a password written to disk. `DATABASE_URL` is bound as
`EnvVar("DATABASE_URL")` whenever it carries a password, however it was configured: from the
environment, from `.env` (read by pydantic-settings, not by the process environment) or as an
override; in the last two cases the process environment is given the value so the reference
resolves when a step or sensor opens the resource.
"""

from __future__ import annotations

import os

import dagster as dg

from aivo_fl.config import Settings

DATABASE_URL_VARIABLE = "DATABASE_URL"


def database_url_reference(settings: Settings) -> str | dg.EnvVar:
    url = settings.database_url
    if os.environ.get(DATABASE_URL_VARIABLE) == url:
        return dg.EnvVar(DATABASE_URL_VARIABLE)
    if settings.sqlalchemy_url.password is None:
        return url  # nothing secret in it (SQLite, trust or peer authentication)
    os.environ[DATABASE_URL_VARIABLE] = url
    return dg.EnvVar(DATABASE_URL_VARIABLE)
