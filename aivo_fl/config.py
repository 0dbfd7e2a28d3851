"""Runtime configuration, read from the environment and an optional `.env` file.

The variable names are the ones AIVO operators already use (see `.env.federated.example`).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_DATABASE_URL = "sqlite:///./models/registry.db"
SUPPORTED_DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")


class ConfigError(Exception):
    """A configuration value is invalid; the message names the variable."""


def normalize_database_url(raw: str) -> URL:
    """Parse an operator's DATABASE_URL into the SQLAlchemy URL we connect with.

    Operators write the Prisma form `postgresql://user:pw@host:5432/aivo`. SQLAlchemy 2.1 maps
    a bare `postgresql://` to psycopg 3, but we ship psycopg2 (which dagster-postgres needs too),
    so the bare form and Heroku-style `postgres://` are pinned to psycopg2 here.
    """
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL ({exc})") from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in SUPPORTED_DATABASE_SCHEMES:
        raise ValueError(f"unknown database scheme '{url.drivername}'; use postgresql://... or sqlite:///...")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg2"):
            raise ValueError(f"unsupported PostgreSQL driver '{driver}'; use postgresql:// (psycopg2)")
        url = url.set(drivername="postgresql+psycopg2")
    return url


class Settings(BaseSettings):
    """Every knob of aivo-fl. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True)

    use_federated_learning: bool = Field(False, alias="USE_FEDERATED_LEARNING")
    main_model_path: Path = Field(Path("./models/main-aivo"), alias="AIVO_MAIN_MODEL_PATH")
    learner_models_path: Path = Field(Path("./models/learners"), alias="AIVO_LEARNER_MODELS_PATH")
    training_epochs: int = Field(100, alias="TRAINING_EPOCHS", gt=0)
    batch_size: int = Field(64, alias="BATCH_SIZE", gt=0)
    curriculum_samples: int = Field(10_000, alias="CURRICULUM_SAMPLES", ge=100)
    data_seed: int = Field(0, alias="AIVO_DATA_SEED", ge=0)
    personalization_depth: Literal["heads", "guide"] = Field("heads", alias="PERSONALIZATION_DEPTH")
    local_proximal_mu: float = Field(0.1, alias="LOCAL_PROXIMAL_MU", ge=0)
    enable_differential_privacy: bool = Field(True, alias="ENABLE_DIFFERENTIAL_PRIVACY")
    noise_multiplier: float = Field(0.1, alias="NOISE_MULTIPLIER", ge=0)
    clip_norm: float = Field(1.0, alias="CLIP_NORM", gt=0)
    privacy_delta: float = Field(1e-5, alias="PRIVACY_DELTA", gt=0, lt=1)
    privacy_epsilon_budget: float | None = Field(None, alias="PRIVACY_EPSILON_BUDGET", gt=0)
    privacy_learner_epsilon_budget: float | None = Field(None, alias="PRIVACY_LEARNER_EPSILON_BUDGET", gt=0)
    database_url: str = Field(DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    aggregation_timezone: str = Field("UTC", alias="AGGREGATION_TIMEZONE")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        normalize_database_url(value)
        return value

    @field_validator("aggregation_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin") from None
        return value

    @field_validator("privacy_epsilon_budget", "privacy_learner_epsilon_budget", mode="before")
    @classmethod
    def _empty_budget_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @cached_property
    def sqlalchemy_url(self) -> URL:
        return normalize_database_url(self.database_url)


def load_settings(**overrides: object) -> Settings:
    """Load settings, turning pydantic's report into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            variable = str(error["loc"][0]) if error["loc"] else "configuration"
            given = error.get("input")
            problems.append(f"{variable}={given!r}: {error['msg']}")
        raise ConfigError("Invalid configuration: " + "; ".join(problems)) from None
