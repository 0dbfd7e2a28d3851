"""Federated learning registry: main versions, learners, personalized models, sessions, updates

Additive: on AIVO's database the app (Prisma) already owns some of these tables, above all
"PersonalizedModel". The upgrade creates only the tables and the enum that are missing and adds
only the missing columns of tables that exist (the `metadata` JSONB column of an existing
"PersonalizedModel"), never touching the app's own columns or rows. When learners and
interactions are mapped to the app's tables (APP_LEARNER_TABLE, APP_INTERACTION_TABLE; `migrate`
passes `app_owned_tables`), aivo-fl's own "Learner" and "LearnerInteraction" are not created.
Everything it adds is written down in `aivo_fl_schema_additions`, and the downgrade removes
exactly that, so the database goes back to the state it had before.

The tables are declared here, frozen, rather than taken from the live models: later revisions
change the models and must find this revision's schema, not theirs.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 15:22:34.129774
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from aivo_fl.registry.schema import SCHEMA_ADDITIONS_TABLE

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ENUM_NAME = "ModelVersionStatus"
STATUS_LABELS = ("TRAINING", "CANDIDATE", "ACTIVE", "DEPRECATED", "REJECTED")
# JSONB on PostgreSQL (AIVO's Prisma schema), JSON text elsewhere.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# The PostgreSQL type is created (or found) by the upgrade itself, never as a side effect of a table.
STATUS = sa.Enum(*STATUS_LABELS, name=ENUM_NAME).with_variant(
    postgresql.ENUM(*STATUS_LABELS, name=ENUM_NAME, create_type=False), "postgresql"
)
# A column added to a table that already holds the app's rows needs a value for those rows.
# aivo-fl's stand-ins for the app's learner and interaction tables (the embedded demo's).
OWN_APP_TABLES = ("Learner", "LearnerInteraction")
ADDED_COLUMN_DEFAULTS = {"metadata": sa.text("'{}'"), "createdAt": sa.text("CURRENT_TIMESTAMP")}

schema = sa.MetaData()
sa.Table(
    "Learner",
    schema,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("baselineCompletedAt", sa.DateTime(), nullable=True),
    sa.Column("deletedAt", sa.DateTime(), nullable=True),
    sa.Column("createdAt", sa.DateTime(), nullable=False),
    sa.Index("Learner_baselineCompletedAt_idx", "baselineCompletedAt"),
)
sa.Table(
    "LearnerInteraction",
    schema,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("learnerId", sa.String(128), sa.ForeignKey("Learner.id", ondelete="CASCADE"), nullable=False),
    sa.Column("features", sa.LargeBinary(), nullable=False),
    sa.Column("difficulty", sa.SmallInteger(), nullable=False),
    sa.Column("modality", sa.SmallInteger(), nullable=False),
    sa.Column("success", sa.SmallInteger(), nullable=False),
    sa.Column("createdAt", sa.DateTime(), nullable=False),
    sa.Index("LearnerInteraction_learnerId_createdAt_idx", "learnerId", "createdAt"),
)
sa.Table(
    "MainModelVersion",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("version", sa.String(32), nullable=False, unique=True),
    sa.Column("status", STATUS, nullable=False),
    sa.Column("modelPath", sa.String(1024), nullable=False),
    sa.Column("parentVersion", sa.String(32), nullable=True),
    sa.Column("metrics", JSON, nullable=False),
    sa.Column("createdAt", sa.DateTime(), nullable=False),
    sa.Column("promotedAt", sa.DateTime(), nullable=True),
    sa.Column("deprecatedAt", sa.DateTime(), nullable=True),
    sa.Index(
        "MainModelVersion_single_active_idx",
        "status",
        unique=True,
        sqlite_where=sa.text("status = 'ACTIVE'"),
        postgresql_where=sa.text("status = 'ACTIVE'"),
    ),
)
sa.Table(
    "PersonalizedModel",
    schema,
    sa.Column("id", sa.String(64), primary_key=True),  # Prisma's cuid() text id
    sa.Column("learnerId", sa.String(128), nullable=False, unique=True),
    sa.Column("baseModel", sa.String(128), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("metadata", JSON, nullable=False),
    sa.Column("createdAt", sa.DateTime(), nullable=False),
    sa.Column("updatedAt", sa.DateTime(), nullable=False),
)
sa.Table(
    "ModelTrainingSession",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("learnerId", sa.String(128), nullable=False),
    sa.Column("sourceVersion", sa.String(32), nullable=False),
    sa.Column("rebasedFrom", sa.String(32), nullable=True),
    sa.Column("samples", sa.Integer(), nullable=False),
    sa.Column("epochs", sa.Integer(), nullable=False),
    sa.Column("lossBefore", sa.Float(), nullable=False),
    sa.Column("accuracyBefore", sa.Float(), nullable=False),
    sa.Column("lossAfter", sa.Float(), nullable=False),
    sa.Column("accuracyAfter", sa.Float(), nullable=False),
    sa.Column("deltaNorm", sa.Float(), nullable=False),
    sa.Column("deltaPath", sa.String(1024), nullable=False),
    sa.Column("startedAt", sa.DateTime(), nullable=False),
    sa.Column("completedAt", sa.DateTime(), nullable=False),
    sa.Index("ModelTrainingSession_completedAt_idx", "completedAt"),
    sa.Index("ModelTrainingSession_learnerId_completedAt_idx", "learnerId", "completedAt"),
)
sa.Table(
    "FederatedUpdate",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("updateId", sa.String(64), nullable=False, unique=True),
    sa.Column("aggregatedAt", sa.DateTime(), nullable=False),
    sa.Column("baseVersion", sa.String(32), nullable=False),
    sa.Column("newVersion", sa.String(32), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("rejectionReason", sa.Text(), nullable=True),
    sa.Column("aggregationStrategy", sa.String(32), nullable=False),
    sa.Column("learningRate", sa.Float(), nullable=False),
    sa.Column("contributingLearners", JSON, nullable=False),
    sa.Column("performanceImprovement", sa.Float(), nullable=True),
    sa.Column("accuracyBefore", sa.Float(), nullable=True),
    sa.Column("accuracyAfter", sa.Float(), nullable=True),
    sa.Column("metrics", JSON, nullable=False),
    sa.Column("dpEnabled", sa.Boolean(), nullable=False),
    sa.Column("noiseMultiplier", sa.Float(), nullable=True),
    sa.Column("clipNorm", sa.Float(), nullable=True),
    sa.Column("sampleRate", sa.Float(), nullable=True),
    sa.Column("epsilonRound", sa.Float(), nullable=True),
    sa.Column("epsilonTotal", sa.Float(), nullable=True),
    sa.Column("privacyDelta", sa.Float(), nullable=True),
    sa.Index("FederatedUpdate_aggregatedAt_idx", "aggregatedAt"),
)
sa.Table(
    "FederatedUpdateContribution",
    schema,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column(
        "federatedUpdateId", sa.Integer(), sa.ForeignKey("FederatedUpdate.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("learnerId", sa.String(128), nullable=False),
    sa.Column("trainingSessionId", sa.Integer(), nullable=True),
    sa.Column("weight", sa.Float(), nullable=False),
    sa.Column("updateNorm", sa.Float(), nullable=True),
    sa.Column("clipped", sa.Boolean(), nullable=False),
    sa.Column("excludedReason", sa.Text(), nullable=True),
    sa.Index("FederatedUpdateContribution_federatedUpdateId_idx", "federatedUpdateId"),
    sa.Index("FederatedUpdateContribution_learnerId_idx", "learnerId"),
    sa.Index("FederatedUpdateContribution_trainingSessionId_idx", "trainingSessionId"),
)
sa.Table(
    "AggregationLock",
    schema,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(256), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("acquiredAt", sa.DateTime(), nullable=False),
    sa.Column("heartbeatAt", sa.DateTime(), nullable=False),
)
additions = sa.Table(
    SCHEMA_ADDITIONS_TABLE,
    sa.MetaData(),
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # table, column or enum
    sa.Column("tableName", sa.String(128), nullable=True),
    sa.Column("name", sa.String(128), nullable=False),
)


def upgrade() -> None:
    bind = op.get_bind()
    additions.create(bind)
    added: list[dict[str, str | None]] = []
    if bind.dialect.name == "postgresql" and not _enum_exists(bind):
        postgresql.ENUM(*STATUS_LABELS, name=ENUM_NAME).create(bind)
        added.append({"kind": "enum", "tableName": None, "name": ENUM_NAME})
    existing = set(sa.inspect(bind).get_table_names())
    # The app's tables are read where they are (aivo_fl/registry/app_tables.py): nothing beside them.
    skipped = OWN_APP_TABLES if op.get_context().config.attributes.get("app_owned_tables") else ()
    for table in schema.sorted_tables:
        if table.name in skipped:
            continue
        if table.name not in existing:
            table.create(bind)
            added.append({"kind": "table", "tableName": None, "name": table.name})
        else:
            added += _add_missing_columns(bind, table)
    if added:
        bind.execute(additions.insert(), added)


def _add_missing_columns(bind: sa.Connection, table: sa.Table) -> list[dict[str, str | None]]:
    present = {c["name"] for c in sa.inspect(bind).get_columns(table.name)}
    added = []
    for column in table.columns:
        if column.name in present:
            continue
        default = ADDED_COLUMN_DEFAULTS.get(column.name)
        op.add_column(
            table.name,
            sa.Column(column.name, column.type, nullable=column.nullable or default is None, server_default=default),
        )
        added.append({"kind": "column", "tableName": table.name, "name": column.name})
    return added


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(additions.c.kind, additions.c.tableName, additions.c.name)).all()
    for kind, table_name, name in rows:
        if kind == "column":
            with op.batch_alter_table(table_name) as batch:
                batch.drop_column(name)
    created = {name for kind, _, name in rows if kind == "table"}
    for table in reversed(schema.sorted_tables):
        if table.name in created:
            op.drop_table(table.name)
    if any(kind == "enum" for kind, _, _ in rows):
        postgresql.ENUM(name=ENUM_NAME).drop(bind)
    additions.drop(bind)


def _enum_exists(bind: sa.Connection) -> bool:
    return bool(bind.scalar(sa.text("SELECT count(*) FROM pg_type WHERE typname = :name"), {"name": ENUM_NAME}))
