"""Each round records the noise multiplier of its private gate's query

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 03:20:00

The validation gate's learner part is a Gaussian query on the round's sampled learners (their
accuracy changes, clipped and noised), charged with the round: the accountant needs its noise
multiplier to recompose the round. Rounds recorded before this revision judged without it (NULL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("FederatedUpdate", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gateNoiseMultiplier", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("FederatedUpdate", schema=None) as batch_op:
        batch_op.drop_column("gateNoiseMultiplier")
