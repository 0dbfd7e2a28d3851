"""The registry's tables.

AIVO's production database is managed by Prisma, so tables and columns keep Prisma's naming
(PascalCase tables, camelCase columns, quoted identifiers on PostgreSQL). Alembic migrations in
`migrations/` create exactly this schema; a test checks there is no autogenerate diff.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from aivo_fl.ml.store.learner_ids import MAX_LEARNER_ID_LENGTH

# Dagster's own storage keeps `alembic_version` in the same schema when it shares AIVO's database.
ALEMBIC_VERSION_TABLE = "aivo_fl_alembic_version"
# What the migration added to a database the app already had (so the downgrade removes only that).
SCHEMA_ADDITIONS_TABLE = "aivo_fl_schema_additions"

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (Prisma's `timestamp(3)`), hands back timezone-aware UTC on every backend."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        # An app's `timestamptz` column comes back aware (in the session's zone); ours are naive UTC.
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_record_id() -> str:
    """A text id shaped like Prisma's cuid() (25 characters, starting with a letter), made here
    because Prisma generates ids in the app, so the app's tables have no database default."""
    return "c" + uuid.uuid4().hex[:24]


class ModelVersionStatus(enum.StrEnum):
    TRAINING = "TRAINING"
    CANDIDATE = "CANDIDATE"
    ACTIVE = "ACTIVE"
    DEPRECATED = "DEPRECATED"
    REJECTED = "REJECTED"


MODEL_VERSION_STATUS = sa.Enum(
    ModelVersionStatus,
    name="ModelVersionStatus",
    values_callable=lambda members: [m.value for m in members],
)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
        datetime: UTCDateTime,
    }


class Learner(Base):
    __tablename__ = "Learner"

    id: Mapped[str] = mapped_column(sa.String(MAX_LEARNER_ID_LENGTH), primary_key=True)
    baselineCompletedAt: Mapped[datetime | None] = mapped_column()
    deletedAt: Mapped[datetime | None] = mapped_column()
    createdAt: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (sa.Index("Learner_baselineCompletedAt_idx", "baselineCompletedAt"),)


class LearnerInteraction(Base):
    """One observed interaction: the 256 input features and the outcome seen for each head."""

    __tablename__ = "LearnerInteraction"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    learnerId: Mapped[str] = mapped_column(sa.ForeignKey("Learner.id", ondelete="CASCADE"))
    # 256 little-endian float32s: 1 KiB a row instead of a 256-column table or a JSON array.
    features: Mapped[bytes] = mapped_column(sa.LargeBinary)
    difficulty: Mapped[int] = mapped_column(sa.SmallInteger)
    modality: Mapped[int] = mapped_column(sa.SmallInteger)
    success: Mapped[int] = mapped_column(sa.SmallInteger)
    createdAt: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (sa.Index("LearnerInteraction_learnerId_createdAt_idx", "learnerId", "createdAt"),)


class MainModelVersion(Base):
    __tablename__ = "MainModelVersion"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    version: Mapped[str] = mapped_column(sa.String(32), unique=True)
    status: Mapped[ModelVersionStatus] = mapped_column(MODEL_VERSION_STATUS)
    modelPath: Mapped[str] = mapped_column(sa.String(1024))
    parentVersion: Mapped[str | None] = mapped_column(sa.String(32))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    createdAt: Mapped[datetime] = mapped_column(default=utcnow)
    promotedAt: Mapped[datetime | None] = mapped_column()
    deprecatedAt: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        # At most one ACTIVE row, enforced by the database so racing promotions cannot both win.
        sa.Index(
            "MainModelVersion_single_active_idx",
            "status",
            unique=True,
            sqlite_where=sa.text("status = 'ACTIVE'"),
            postgresql_where=sa.text("status = 'ACTIVE'"),
        ),
    )


class PersonalizedModel(Base):
    __tablename__ = "PersonalizedModel"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True, default=new_record_id)
    learnerId: Mapped[str] = mapped_column(sa.String(MAX_LEARNER_ID_LENGTH), unique=True)
    baseModel: Mapped[str] = mapped_column(sa.String(128))
    status: Mapped[str] = mapped_column(sa.String(32), default="ACTIVE")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    createdAt: Mapped[datetime] = mapped_column(default=utcnow)
    updatedAt: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ModelTrainingSession(Base):
    __tablename__ = "ModelTrainingSession"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    learnerId: Mapped[str] = mapped_column(sa.String(MAX_LEARNER_ID_LENGTH))
    sourceVersion: Mapped[str] = mapped_column(sa.String(32))
    rebasedFrom: Mapped[str | None] = mapped_column(sa.String(32))
    samples: Mapped[int] = mapped_column(sa.Integer)
    epochs: Mapped[int] = mapped_column(sa.Integer)
    lossBefore: Mapped[float] = mapped_column(sa.Float)
    accuracyBefore: Mapped[float] = mapped_column(sa.Float)
    lossAfter: Mapped[float] = mapped_column(sa.Float)
    accuracyAfter: Mapped[float] = mapped_column(sa.Float)
    deltaNorm: Mapped[float] = mapped_column(sa.Float)
    deltaPath: Mapped[str] = mapped_column(sa.String(1024))
    startedAt: Mapped[datetime] = mapped_column()
    completedAt: Mapped[datetime] = mapped_column()

    __table_args__ = (
        sa.Index("ModelTrainingSession_completedAt_idx", "completedAt"),
        sa.Index("ModelTrainingSession_learnerId_completedAt_idx", "learnerId", "completedAt"),
    )


class FederatedUpdate(Base):
    __tablename__ = "FederatedUpdate"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    updateId: Mapped[str] = mapped_column(sa.String(64), unique=True)
    aggregatedAt: Mapped[datetime] = mapped_column(default=utcnow)
    baseVersion: Mapped[str] = mapped_column(sa.String(32))
    newVersion: Mapped[str | None] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(16))  # a RoundStatus: PROMOTED or REJECTED
    rejectionReason: Mapped[str | None] = mapped_column(sa.Text)
    aggregationStrategy: Mapped[str] = mapped_column(sa.String(32))
    learningRate: Mapped[float] = mapped_column(sa.Float)
    contributingLearners: Mapped[list[Any]] = mapped_column(default=list)
    performanceImprovement: Mapped[float | None] = mapped_column(sa.Float)
    accuracyBefore: Mapped[float | None] = mapped_column(sa.Float)
    accuracyAfter: Mapped[float | None] = mapped_column(sa.Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Privacy accounting inputs: the accountant recomposes these, so totals survive restarts.
    dpEnabled: Mapped[bool] = mapped_column(sa.Boolean)
    noiseMultiplier: Mapped[float | None] = mapped_column(sa.Float)
    clipNorm: Mapped[float | None] = mapped_column(sa.Float)
    sampleRate: Mapped[float | None] = mapped_column(sa.Float)
    epsilonRound: Mapped[float | None] = mapped_column(sa.Float)
    epsilonTotal: Mapped[float | None] = mapped_column(sa.Float)
    privacyDelta: Mapped[float | None] = mapped_column(sa.Float)
    # What sampling and adaptive clipping used (revision 0002): the learners eligible to be sampled,
    # the fixed denominator, and the clip norm's target quantile, count noise and released estimate.
    eligiblePopulation: Mapped[int | None] = mapped_column(sa.Integer)
    dpDenominator: Mapped[float | None] = mapped_column(sa.Float)
    clipTargetQuantile: Mapped[float | None] = mapped_column(sa.Float)
    quantileNoiseMultiplier: Mapped[float | None] = mapped_column(sa.Float)
    clipQuantileEstimate: Mapped[float | None] = mapped_column(sa.Float)
    # The private gate's query (revision 0003), charged with the round.
    gateNoiseMultiplier: Mapped[float | None] = mapped_column(sa.Float)

    __table_args__ = (sa.Index("FederatedUpdate_aggregatedAt_idx", "aggregatedAt"),)


class FederatedUpdateContribution(Base):
    """What each candidate learner gave a round, or why it was left out."""

    __tablename__ = "FederatedUpdateContribution"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    federatedUpdateId: Mapped[int] = mapped_column(sa.ForeignKey("FederatedUpdate.id", ondelete="CASCADE"))
    learnerId: Mapped[str] = mapped_column(sa.String(MAX_LEARNER_ID_LENGTH))
    # The session whose delta was offered; a delta already aggregated is never counted twice.
    trainingSessionId: Mapped[int | None] = mapped_column(sa.Integer)
    weight: Mapped[float] = mapped_column(sa.Float)
    updateNorm: Mapped[float | None] = mapped_column(sa.Float)
    clipped: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    # In the round's population (could have been sampled): the learner's privacy ledger pays for it.
    charged: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    excludedReason: Mapped[str | None] = mapped_column(sa.Text)

    __table_args__ = (
        sa.Index("FederatedUpdateContribution_federatedUpdateId_idx", "federatedUpdateId"),
        sa.Index("FederatedUpdateContribution_learnerId_idx", "learnerId"),
        sa.Index("FederatedUpdateContribution_trainingSessionId_idx", "trainingSessionId"),
    )


class AggregationLock(Base):
    """A lease that keeps two aggregation rounds from overlapping, whoever started them.

    `host` and `pid` name the holding process so a dead holder is recognised at once on its own
    host; `heartbeatAt` is refreshed while it runs so a dead holder elsewhere ages out quickly.
    """

    __tablename__ = "AggregationLock"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(sa.String(256))
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int] = mapped_column(sa.Integer)
    acquiredAt: Mapped[datetime] = mapped_column()
    heartbeatAt: Mapped[datetime] = mapped_column()


metadata = Base.metadata
