"""The tables the AIVO app owns: learners and their interactions, read where they are.

On the embedded demo these are aivo-fl's own "Learner" and "LearnerInteraction" (created by the
migration). On AIVO's database they are the app's tables under the app's column names, given by
APP_LEARNER_TABLE / APP_INTERACTION_TABLE and APP_LEARNER_COLUMNS / APP_INTERACTION_COLUMNS (our
name -> the app's). Such tables (or views) are only read: never created, altered or written, and
erasure leaves their rows to the app. Queries are written once, against our names: each mapped
column carries our name as its SQLAlchemy `key` and the app's as its SQL name.

What the app's tables must provide (README, "AIVO's existing database"):
- learners: `id` (text), `baselineCompletedAt` (timestamp, NULL until the baseline assessment is
  done), `deletedAt` (timestamp, NULL until the learner is deleted: a soft delete).
- interactions: `id` (unique; breaks ties in time order), `learnerId`, `features` (the 256 model
  inputs: packed little-endian float32 `bytea`, a numeric array, or a JSON array), `difficulty`,
  `modality`, `success` (the observed class per head, integers), `createdAt` (timestamp).
  A row that breaks these is skipped and counted by reason, never fatal (docs/operations.md).
Timestamps are UTC, as Prisma's `DateTime` stores them (`timestamptz` works too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from aivo_fl.config import APP_INTERACTION_FIELDS, APP_LEARNER_FIELDS
from aivo_fl.registry.errors import RegistryError
from aivo_fl.registry.schema import Learner, LearnerInteraction, UTCDateTime

if TYPE_CHECKING:
    from aivo_fl.config import Settings

# The names aivo-fl's own tables carry, which the migration creates only when no app table is mapped.
OWN_TABLE_NAMES = (Learner.__tablename__, LearnerInteraction.__tablename__)

# Types for reading: values pass through untouched except timestamps (made aware UTC). `features`
# and the interaction id take whatever the app stores (decoded and checked row by row in
# aivo_fl.ml.interactions: the app's rows are untrusted input).
# The settings validate mapped names against the same field lists.
_LEARNER_TYPES: dict[str, Any] = dict(zip(APP_LEARNER_FIELDS, (sa.String(), UTCDateTime(), UTCDateTime()), strict=True))
_INTERACTION_TYPES: dict[str, Any] = dict(
    zip(
        APP_INTERACTION_FIELDS,
        (
            sa.types.NullType(),
            sa.String(),
            sa.types.NullType(),
            sa.Integer(),
            sa.Integer(),
            sa.Integer(),
            UTCDateTime(),
        ),
        strict=True,
    )
)


@dataclass(frozen=True)
class AppTables:
    """Where learners and interactions are read; `app_owned` when they are the app's tables."""

    learner: sa.Table
    interaction: sa.Table
    app_owned: bool = False

    @classmethod
    def own(cls) -> AppTables:
        return cls(Learner.__table__, LearnerInteraction.__table__)  # type: ignore[arg-type]

    @classmethod
    def mapped(
        cls,
        learner_table: str,
        interaction_table: str,
        learner_columns: Mapping[str, str] | None = None,
        interaction_columns: Mapping[str, str] | None = None,
    ) -> AppTables:
        schema = sa.MetaData()
        learner = _table(schema, learner_table, _LEARNER_TYPES, learner_columns or {})
        interaction = _table(schema, interaction_table, _INTERACTION_TYPES, interaction_columns or {})
        return cls(learner, interaction, app_owned=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> AppTables:
        if settings.app_learner_table is None or settings.app_interaction_table is None:
            return cls.own()
        return cls.mapped(
            settings.app_learner_table,
            settings.app_interaction_table,
            settings.app_learner_columns,
            settings.app_interaction_columns,
        )

    def describe(self) -> list[str]:
        """One line per table: where each of our names is read from (what `aivo-fl migrate` prints)."""
        owner = "the app's" if self.app_owned else "aivo-fl's own"
        return [
            f'{kind} from {owner} "{table.name}" ('
            + ", ".join(c.key if c.key == c.name else f"{c.key}={c.name}" for c in table.columns)
            + ")"
            for kind, table in (("Learners", self.learner), ("Interactions", self.interaction))
        ]

    def verify(self, connection: sa.Connection) -> None:
        """Refuse, naming the setting, an app table or column that is not in the database."""
        if not self.app_owned:
            return
        inspector = sa.inspect(connection)
        present = set(inspector.get_table_names()) | set(inspector.get_view_names())
        for table, setting in ((self.learner, "LEARNER"), (self.interaction, "INTERACTION")):
            if table.name not in present:
                raise RegistryError(f'APP_{setting}_TABLE: no table or view "{table.name}" in the database')
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            missing = [f"{c.key} (as {c.name})" for c in table.columns if c.name not in columns]
            if missing:
                raise RegistryError(
                    f'APP_{setting}_COLUMNS: "{table.name}" has no column for {", ".join(missing)}; '
                    f"its columns are {', '.join(sorted(columns))}"
                )


def _table(schema: sa.MetaData, name: str, types: dict[str, Any], names: Mapping[str, str]) -> sa.Table:
    return sa.Table(name, schema, *(sa.Column(names.get(key, key), type_, key=key) for key, type_ in types.items()))
