"""Federated learning registry: main versions, learners, personalized models, sessions, updates

Revision ID: 0001
Revises:
Create Date: 2026-11-28 15:22:34.129774
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL (AIVO's Prisma schema), JSON text elsewhere.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
MODEL_VERSION_STATUS = sa.Enum("TRAINING", "CANDIDATE", "ACTIVE", "DEPRECATED", "REJECTED", name="ModelVersionStatus")

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "AggregationLock",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=256), nullable=False),
        sa.Column("acquiredAt", sa.DateTime(), nullable=False),
        sa.Column("expiresAt", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "FederatedUpdate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("updateId", sa.String(length=64), nullable=False),
        sa.Column("aggregatedAt", sa.DateTime(), nullable=False),
        sa.Column("baseVersion", sa.String(length=32), nullable=False),
        sa.Column("newVersion", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("rejectionReason", sa.Text(), nullable=True),
        sa.Column("aggregationStrategy", sa.String(length=32), nullable=False),
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
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("updateId"),
    )
    with op.batch_alter_table("FederatedUpdate", schema=None) as batch_op:
        batch_op.create_index("FederatedUpdate_aggregatedAt_idx", ["aggregatedAt"], unique=False)

    op.create_table(
        "Learner",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("baselineCompletedAt", sa.DateTime(), nullable=True),
        sa.Column("deletedAt", sa.DateTime(), nullable=True),
        sa.Column("createdAt", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("Learner", schema=None) as batch_op:
        batch_op.create_index("Learner_baselineCompletedAt_idx", ["baselineCompletedAt"], unique=False)

    op.create_table(
        "MainModelVersion",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("status", MODEL_VERSION_STATUS, nullable=False),
        sa.Column("modelPath", sa.String(length=1024), nullable=False),
        sa.Column("parentVersion", sa.String(length=32), nullable=True),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("createdAt", sa.DateTime(), nullable=False),
        sa.Column("promotedAt", sa.DateTime(), nullable=True),
        sa.Column("deprecatedAt", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version"),
    )
    with op.batch_alter_table("MainModelVersion", schema=None) as batch_op:
        batch_op.create_index(
            "MainModelVersion_single_active_idx",
            ["status"],
            unique=True,
            sqlite_where=sa.text("status = 'ACTIVE'"),
            postgresql_where=sa.text("status = 'ACTIVE'"),
        )

    op.create_table(
        "ModelTrainingSession",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("learnerId", sa.String(length=128), nullable=False),
        sa.Column("sourceVersion", sa.String(length=32), nullable=False),
        sa.Column("rebasedFrom", sa.String(length=32), nullable=True),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("lossBefore", sa.Float(), nullable=False),
        sa.Column("accuracyBefore", sa.Float(), nullable=False),
        sa.Column("lossAfter", sa.Float(), nullable=False),
        sa.Column("accuracyAfter", sa.Float(), nullable=False),
        sa.Column("deltaNorm", sa.Float(), nullable=False),
        sa.Column("deltaPath", sa.String(length=1024), nullable=False),
        sa.Column("startedAt", sa.DateTime(), nullable=False),
        sa.Column("completedAt", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ModelTrainingSession", schema=None) as batch_op:
        batch_op.create_index("ModelTrainingSession_completedAt_idx", ["completedAt"], unique=False)
        batch_op.create_index(
            "ModelTrainingSession_learnerId_completedAt_idx", ["learnerId", "completedAt"], unique=False
        )

    op.create_table(
        "PersonalizedModel",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("learnerId", sa.String(length=128), nullable=False),
        sa.Column("baseModel", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("createdAt", sa.DateTime(), nullable=False),
        sa.Column("updatedAt", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("learnerId"),
    )
    op.create_table(
        "FederatedUpdateContribution",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federatedUpdateId", sa.Integer(), nullable=False),
        sa.Column("learnerId", sa.String(length=128), nullable=False),
        sa.Column("trainingSessionId", sa.Integer(), nullable=True),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("updateNorm", sa.Float(), nullable=True),
        sa.Column("clipped", sa.Boolean(), nullable=False),
        sa.Column("excludedReason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["federatedUpdateId"], ["FederatedUpdate.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("FederatedUpdateContribution", schema=None) as batch_op:
        batch_op.create_index("FederatedUpdateContribution_federatedUpdateId_idx", ["federatedUpdateId"], unique=False)
        batch_op.create_index("FederatedUpdateContribution_learnerId_idx", ["learnerId"], unique=False)
        batch_op.create_index("FederatedUpdateContribution_trainingSessionId_idx", ["trainingSessionId"], unique=False)

    op.create_table(
        "LearnerInteraction",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("learnerId", sa.String(length=128), nullable=False),
        sa.Column("features", sa.LargeBinary(), nullable=False),
        sa.Column("difficulty", sa.SmallInteger(), nullable=False),
        sa.Column("modality", sa.SmallInteger(), nullable=False),
        sa.Column("success", sa.SmallInteger(), nullable=False),
        sa.Column("createdAt", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["learnerId"], ["Learner.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("LearnerInteraction", schema=None) as batch_op:
        batch_op.create_index("LearnerInteraction_learnerId_createdAt_idx", ["learnerId", "createdAt"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("LearnerInteraction", schema=None) as batch_op:
        batch_op.drop_index("LearnerInteraction_learnerId_createdAt_idx")

    op.drop_table("LearnerInteraction")
    with op.batch_alter_table("FederatedUpdateContribution", schema=None) as batch_op:
        batch_op.drop_index("FederatedUpdateContribution_trainingSessionId_idx")
        batch_op.drop_index("FederatedUpdateContribution_learnerId_idx")
        batch_op.drop_index("FederatedUpdateContribution_federatedUpdateId_idx")

    op.drop_table("FederatedUpdateContribution")
    op.drop_table("PersonalizedModel")
    with op.batch_alter_table("ModelTrainingSession", schema=None) as batch_op:
        batch_op.drop_index("ModelTrainingSession_learnerId_completedAt_idx")
        batch_op.drop_index("ModelTrainingSession_completedAt_idx")

    op.drop_table("ModelTrainingSession")
    with op.batch_alter_table("MainModelVersion", schema=None) as batch_op:
        batch_op.drop_index(
            "MainModelVersion_single_active_idx",
            sqlite_where=sa.text("status = 'ACTIVE'"),
            postgresql_where=sa.text("status = 'ACTIVE'"),
        )

    op.drop_table("MainModelVersion")
    with op.batch_alter_table("Learner", schema=None) as batch_op:
        batch_op.drop_index("Learner_baselineCompletedAt_idx")

    op.drop_table("Learner")
    with op.batch_alter_table("FederatedUpdate", schema=None) as batch_op:
        batch_op.drop_index("FederatedUpdate_aggregatedAt_idx")

    op.drop_table("FederatedUpdate")
    op.drop_table("AggregationLock")
    # The native enum type outlives its table on PostgreSQL unless dropped explicitly.
    MODEL_VERSION_STATUS.drop(op.get_bind(), checkfirst=True)
