"""The ``dataset`` table: the identity of the dataset this database curates (issue 10 item 8).

Only the table: its one row (a UUID) is written by ``LabelStore`` when it opens a
database without one, as it did before migrations existed.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dataset_id"),
    )


def downgrade() -> None:
    op.drop_table("dataset")  # the identity goes with it: models trained on this dataset no longer match it
