"""``images.revision`` and ``images.reviewed``: what changed since a revision, and who was decided on, per row.

Each worker keeps every image's split, label and review state in memory beside the
vector index (issue 13) and follows changes by reading only the rows whose revision
is newer than the one it has: a relabel costs it one indexed query, not a table load.
``reviewed`` (a relabel or confirm that no undo reverted) was a join over the whole
audit trail on every request; it is now kept with the row in the write's transaction.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("reviewed", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.create_index("ix_images_revision", ["revision"])
    # the reviewed images so far: in a relabel or confirm event that no undo reverted
    op.execute(
        """
        UPDATE images SET reviewed = TRUE WHERE image_id IN (
            SELECT c.image_id FROM label_changes c JOIN label_events e ON e.event_id = c.event_id
            WHERE e.kind IN ('relabel', 'confirm')
              AND e.event_id NOT IN (
                  SELECT u.reverts_event_id FROM label_events u WHERE u.reverts_event_id IS NOT NULL
              )
        )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_revision")
        batch.drop_column("reviewed")
        batch.drop_column("revision")
