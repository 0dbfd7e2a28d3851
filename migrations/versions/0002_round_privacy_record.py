"""Each round records the privacy parameters it really used; contributions record who was charged

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 10:30:00

Adds to "FederatedUpdate" what the accountant needs beyond the noise multiplier, clip norm, sample
rate and delta it already had: the eligible population the learners were sampled from, the fixed
denominator, and adaptive clipping's target quantile, count-query noise and released estimate.
Adds "charged" to "FederatedUpdateContribution": the learner was in the round's population (could
have been sampled), so their ledger pays for the round. Rounds recorded before this revision
sampled nobody, so exactly their included learners were charged: the backfill says so.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ROUND_COLUMNS = (
    ("eligiblePopulation", sa.Integer()),
    ("dpDenominator", sa.Float()),
    ("clipTargetQuantile", sa.Float()),
    ("quantileNoiseMultiplier", sa.Float()),
    ("clipQuantileEstimate", sa.Float()),
)


def upgrade() -> None:
    with op.batch_alter_table("FederatedUpdate", schema=None) as batch_op:
        for name, type_ in ROUND_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    with op.batch_alter_table("FederatedUpdateContribution", schema=None) as batch_op:
        batch_op.add_column(sa.Column("charged", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(sa.text('UPDATE "FederatedUpdateContribution" SET "charged" = ("excludedReason" IS NULL)'))


def downgrade() -> None:
    with op.batch_alter_table("FederatedUpdateContribution", schema=None) as batch_op:
        batch_op.drop_column("charged")
    with op.batch_alter_table("FederatedUpdate", schema=None) as batch_op:
        for name, _ in reversed(ROUND_COLUMNS):
            batch_op.drop_column(name)
