"""``dataset.revision``: a counter every change of labels or images bumps, in the same transaction.

Caches keyed by it (an evaluation, the suspect ranking, the data version) know at the
cost of one single-row read whether anything changed, in every worker and replica.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dataset") as batch:
        batch.add_column(sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("dataset") as batch:
        batch.drop_column("revision")
