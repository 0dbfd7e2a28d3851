"""Runtime configuration, read from the environment and an optional `.env` file.

The variable names are the ones AIVO operators already use (see `.env.federated.example`).
"""

from __future__ import annotations

import json
import math
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from aivo_fl.ml.aggregation.server_optimizers import SERVER_OPTIMIZERS
from aivo_fl.ml.aggregation.strategies import STRATEGIES
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.redaction import hide_secrets, url_password

DEFAULT_DATABASE_URL = "sqlite:///./models/registry.db"
# The round's own defaults (min learners, strategy, staleness window, server optimizer) live in
# RoundOptions; the settings that choose them start from there.
_ROUND = RoundOptions()
_CHOICES = {
    "aggregation_strategy": ("strategy", STRATEGIES),
    "server_optimizer": ("server optimizer", SERVER_OPTIMIZERS),
}
SUPPORTED_DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")
# The model name the activation guide's "PersonalizedModel" rows carry in `baseModel`.
DEFAULT_BASE_MODEL = "aivo-super-model-v1"
# The activation guide's cron line: Sundays at 02:00.
WEEKLY_CRON = "0 2 * * 0"
# One cron field: digits, names (SUN, JAN), and the operators * / , - ?
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?-]+$")
AUTO_CLIP = "auto"
INITIAL_AUTO_CLIP_NORM = 1.0  # CLIP_NORM=auto starts here; later rounds follow CLIP_TARGET_QUANTILE

# PRIVACY_PRESET: user-level DP-FedAvg with Poisson sampling, adaptive clipping and the private gate.
# `user-level`: epsilon <= 2 over 52 weekly rounds at delta 1e-6 (PLD accountant); each round takes
#   its noise multiplier and sample rate from the planner (aivo_fl.ml.privacy.planner) for the
#   population it sees, and the budget stops the rounds once the year's epsilon is spent. A population
#   too small for the target is refused with the population it would need (`aivo-fl privacy-plan`).
# `user-level-epsilon-8-small-schools`: the previous preset, for populations the planner refuses: noise
#   1.0 at q = 0.1, epsilon 6.5 over 52 rounds at delta 1e-6 (PLD, gate included), budget 8. Weak
#   privacy, named so; `python -m benchmarks privacy` recomputes both.
PRIVACY_PRESETS: dict[str, dict[str, Any]] = {
    "user-level": {
        "enable_differential_privacy": True,
        "clip_norm": AUTO_CLIP,
        "clip_target_quantile": 0.5,
        "privacy_delta": 1e-6,
        "privacy_target_epsilon": 2.0,
        "privacy_target_rounds": 52,
        "privacy_epsilon_budget": 2.0,
    },
    "user-level-epsilon-8-small-schools": {
        "enable_differential_privacy": True,
        "noise_multiplier": 1.0,
        "learner_sample_rate": 0.1,
        "clip_norm": AUTO_CLIP,
        "clip_target_quantile": 0.5,
        "privacy_delta": 1e-6,
        "privacy_epsilon_budget": 8.0,
    },
}


# The app-owned tables' columns aivo-fl reads (see aivo_fl/registry/app_tables.py), by our names.
APP_LEARNER_FIELDS = ("id", "baselineCompletedAt", "deletedAt")
APP_INTERACTION_FIELDS = ("id", "learnerId", "features", "difficulty", "modality", "success", "createdAt")
# Our column name -> the app's; names must not be empty.
AppColumns = Annotated[dict[str, Annotated[str, StringConstraints(min_length=1)]], NoDecode]


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
    if url.host and "@" in url.host:  # the password held an '@': half of it would be taken for the host
        raise ValueError("the password contains '@'; percent-encode it as %40")
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
    local_epochs: int = Field(5, alias="LOCAL_EPOCHS", gt=0)
    enable_differential_privacy: bool = Field(True, alias="ENABLE_DIFFERENTIAL_PRIVACY")
    privacy_preset: Literal["user-level", "user-level-epsilon-8-small-schools"] | None = Field(
        None, alias="PRIVACY_PRESET"
    )
    # Finite only (CLIP_NORM's own validator too): an infinite knob would switch clipping or noise
    # off while epsilon is still charged.
    noise_multiplier: float = Field(0.1, alias="NOISE_MULTIPLIER", ge=0, allow_inf_nan=False)
    clip_norm: float | Literal["auto"] = Field(1.0, alias="CLIP_NORM")  # "auto": adaptive clipping
    clip_target_quantile: float = Field(0.5, alias="CLIP_TARGET_QUANTILE", gt=0, lt=1)
    learner_sample_rate: float = Field(1.0, alias="LEARNER_SAMPLE_RATE", gt=0, le=1)
    privacy_delta: float = Field(1e-5, alias="PRIVACY_DELTA", gt=0, lt=1, allow_inf_nan=False)
    privacy_epsilon_budget: float | None = Field(None, alias="PRIVACY_EPSILON_BUDGET", gt=0, allow_inf_nan=False)
    privacy_learner_epsilon_budget: float | None = Field(
        None, alias="PRIVACY_LEARNER_EPSILON_BUDGET", gt=0, allow_inf_nan=False
    )
    # Set: each round's noise multiplier and sample rate come from the planner, for this epsilon over
    # PRIVACY_TARGET_ROUNDS rounds at the population the round sees (NOISE_MULTIPLIER and
    # LEARNER_SAMPLE_RATE are then not used).
    privacy_target_epsilon: float | None = Field(None, alias="PRIVACY_TARGET_EPSILON", gt=0, allow_inf_nan=False)
    privacy_target_rounds: int = Field(52, alias="PRIVACY_TARGET_ROUNDS", ge=1)
    # Unset: the CPUs this process may use split between the runs Dagster may run at once
    # (aivo_fl.ml.runtime.cpu_threads); set: this many, capped at the CPUs allowed.
    torch_num_threads: int | None = Field(None, alias="TORCH_NUM_THREADS", gt=0)
    server_optimizer: str = Field(_ROUND.server_optimizer, alias="SERVER_OPTIMIZER")
    # Unset: the server optimizer's own default (sgd 6, adam 0.02, momentum 0.1). The CLI's and
    # the Dagster config's learning rate override it for one round.
    server_learning_rate: float | None = Field(None, alias="SERVER_LEARNING_RATE", gt=0, allow_inf_nan=False)
    database_url: str = Field(DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    # Set: runs Dagster launches (sensors, schedule, UI) execute each step on Celery workers fed by this
    # broker (also the result backend), on CELERY_QUEUE; unset: in the run's own process.
    celery_broker_url: SecretStr | None = Field(None, alias="CELERY_BROKER_URL")
    celery_queue: str = Field("dagster", alias="CELERY_QUEUE", min_length=1)
    aggregation_timezone: str = Field("UTC", alias="AGGREGATION_TIMEZONE")
    # Keys the pseudonyms that replace an erased learner's id in past rounds' audit rows.
    erasure_key: SecretStr | None = Field(None, alias="AIVO_ERASURE_KEY", min_length=16)
    # The scheduled round: when, and the options `run-federated-aggregation` takes on the command line.
    aggregation_cron: str = Field(WEEKLY_CRON, alias="AGGREGATION_CRON")
    aggregation_min_learners: int = Field(_ROUND.min_learners, alias="AGGREGATION_MIN_LEARNERS", ge=1)
    aggregation_strategy: str = Field(_ROUND.strategy, alias="AGGREGATION_STRATEGY")
    aggregation_max_stale_days: int = Field(_ROUND.max_stale_days, alias="AGGREGATION_MAX_STALE_DAYS", ge=1)
    # Where the aggregation operation appends its progress (the guide's "review logs").
    aggregation_log_path: Path = Field(Path("./logs/aggregation.log"), alias="AGGREGATION_LOG_PATH")
    # The `baseModel` recorded on each learner's "PersonalizedModel" row.
    base_model_name: str = Field(DEFAULT_BASE_MODEL, alias="AIVO_BASE_MODEL_NAME", min_length=1)
    # Alerts: a Slack-compatible webhook (may carry a token, hence secret) and the UI's address for run links.
    alert_webhook_url: SecretStr | None = Field(None, alias="ALERT_WEBHOOK_URL")
    dagster_webserver_url: str = Field("http://127.0.0.1:3000", alias="DAGSTER_WEBSERVER_URL")
    # Alert when this many aggregation runs in a row found no eligible learners (one empty week is normal).
    alert_after_empty_rounds: int = Field(2, alias="ALERT_AFTER_EMPTY_ROUNDS", ge=1)

    # -- Tables the AIVO app owns (aivo_fl/registry/app_tables.py). Unset: aivo-fl's own "Learner" and
    # "LearnerInteraction" (the embedded demo). Set: the app's tables, read where they are, under the
    # app's column names (JSON, our name -> the app's); never created, altered or written by aivo-fl.
    app_learner_table: str | None = Field(None, alias="APP_LEARNER_TABLE", min_length=1)
    app_learner_columns: AppColumns = Field(default_factory=dict, alias="APP_LEARNER_COLUMNS")
    app_interaction_table: str | None = Field(None, alias="APP_INTERACTION_TABLE", min_length=1)
    app_interaction_columns: AppColumns = Field(default_factory=dict, alias="APP_INTERACTION_COLUMNS")

    @field_validator("app_learner_table", "app_interaction_table", mode="before")
    @classmethod
    def _no_table_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("app_learner_columns", "app_interaction_columns", mode="before")
    @classmethod
    def _columns_from_json(cls, value: object) -> object:
        # Decoded here, not by pydantic-settings, so bad JSON is a one-line configuration error too.
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f'expected a JSON object such as {{"id": "userId"}} ({exc.msg})') from None

    @field_validator("app_learner_columns", "app_interaction_columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        known = APP_LEARNER_FIELDS if info.field_name == "app_learner_columns" else APP_INTERACTION_FIELDS
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown column(s) {', '.join(unknown)}; map any of {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _app_tables_together(self) -> Settings:
        """Both app tables or neither: interactions reference learners, so both live on the same side."""
        if (self.app_learner_table is None) != (self.app_interaction_table is None):
            raise ValueError("APP_LEARNER_TABLE and APP_INTERACTION_TABLE are set together, or neither")
        if self.app_learner_table is None and (self.app_learner_columns or self.app_interaction_columns):
            raise ValueError(
                "APP_LEARNER_COLUMNS and APP_INTERACTION_COLUMNS need APP_LEARNER_TABLE and APP_INTERACTION_TABLE"
            )
        return self

    @field_validator("main_model_path", "learner_models_path", mode="before")
    @classmethod
    def _path_not_empty(cls, value: object) -> object:
        # An empty path would silently mean the working directory.
        if isinstance(value, str | Path) and not str(value).strip():
            raise ValueError("must not be empty; give the model store's folder")
        return value

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

    @field_validator("aggregation_cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError("expected a 5-field cron line such as '0 2 * * 0' (Sundays 02:00)")
        return value

    @field_validator("aggregation_strategy", "server_optimizer")
    @classmethod
    def _check_choice(cls, value: str, info: ValidationInfo) -> str:
        kind, choices = _CHOICES[info.field_name]
        if value not in choices:
            raise ValueError(f"unknown {kind} {value!r}; use one of {', '.join(choices)}")
        return value

    @field_validator(
        "privacy_epsilon_budget",
        "privacy_learner_epsilon_budget",
        "privacy_target_epsilon",
        "alert_webhook_url",
        "erasure_key",
        "privacy_preset",
        "torch_num_threads",
        "server_learning_rate",
        "celery_broker_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("clip_norm", mode="before")
    @classmethod
    def _check_clip_norm(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == AUTO_CLIP:
            return AUTO_CLIP
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError("should be a number greater than 0, or auto (adaptive clipping)") from None
        if not (number > 0 and math.isfinite(number)):
            raise ValueError("Input should be a finite number greater than 0")
        return number

    @model_validator(mode="after")
    def _apply_privacy_preset(self) -> Settings:
        """The preset sets its knobs; one also set explicitly to another value is a conflict, not an override."""
        if self.privacy_preset is None:
            return self
        for name, value in PRIVACY_PRESETS[self.privacy_preset].items():
            if name in self.model_fields_set and getattr(self, name) != value:
                alias = type(self).model_fields[name].alias
                raise ValueError(
                    f"PRIVACY_PRESET={self.privacy_preset} sets {alias}={value}; "
                    f"remove {alias}={getattr(self, name)} or the preset"
                )
            object.__setattr__(self, name, value)
        return self

    def privacy_clip(self) -> tuple[float, float | None]:
        """(clip norm, target quantile): the fixed clip norm and None, or under CLIP_NORM=auto the
        first round's clip norm and the quantile later rounds follow."""
        if self.clip_norm == AUTO_CLIP:
            return INITIAL_AUTO_CLIP_NORM, self.clip_target_quantile
        return float(self.clip_norm), None

    def privacy(self) -> PrivacySettings:
        """The round's DP knobs, as this deployment sets them."""
        clip_norm, target_quantile = self.privacy_clip()
        return PrivacySettings(
            enabled=self.enable_differential_privacy,
            noise_multiplier=self.noise_multiplier,
            clip_norm=clip_norm,
            delta=self.privacy_delta,
            epsilon_budget=self.privacy_epsilon_budget,
            learner_epsilon_budget=self.privacy_learner_epsilon_budget,
            sample_rate=self.learner_sample_rate,
            clip_target_quantile=target_quantile,
            target_epsilon=self.privacy_target_epsilon,
            target_rounds=self.privacy_target_rounds,
        )

    @cached_property
    def sqlalchemy_url(self) -> URL:
        return normalize_database_url(self.database_url)


def load_settings(**overrides: object) -> Settings:
    """Load settings, turning pydantic's report into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems, secrets = [], []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            if not error["loc"]:  # a rule across variables; its message names them
                problems.append(message)
                continue
            given = error.get("input")
            secrets.append(url_password(given) if isinstance(given, str) else None)
            problems.append(f"{error['loc'][0]}={given!r}: {message}")
        # A URL's password never reaches the screen, whichever part of the message renders it.
        raise ConfigError(hide_secrets("Invalid configuration: " + "; ".join(problems), *secrets)) from None
