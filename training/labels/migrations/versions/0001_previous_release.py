"""The schema of the release before migrations (commit 1b62949): images, classes, the audit trail, promotions.

Written by hand to be exactly what that release's ``Base.metadata.create_all`` made
(``tests/code/fixtures/labels_1b62949.sql``), so a database it made is stamped at
this revision and upgraded from here.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "classes",
        sa.Column("name", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "images",
        sa.Column("image_id", sa.String(32), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("split", sa.String(64), nullable=False),
        sa.Column("folder_label", sa.String(256), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("image_id"),
    )
    op.create_index("ix_images_label", "images", ["label"])
    op.create_index("ix_images_path", "images", ["path"], unique=True)
    op.create_index("ix_images_present", "images", ["present"])
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_index("ix_images_split", "images", ["split"])
    op.create_table(
        "label_events",
        sa.Column("event_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.String(2048), nullable=False),
        sa.Column("reverts_event_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("event_id"),
        sa.UniqueConstraint("reverts_event_id"),
        sa.ForeignKeyConstraint(["reverts_event_id"], ["label_events.event_id"]),
    )
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("tag", sa.String(512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.String(2048), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_promotions_model_name", "promotions", ["model_name"])
    op.create_table(
        "label_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.String(32), nullable=False),
        sa.Column("old_label", sa.String(256), nullable=False),
        sa.Column("new_label", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["event_id"], ["label_events.event_id"]),
        sa.ForeignKeyConstraint(["image_id"], ["images.image_id"]),
    )
    op.create_index("ix_label_changes_event_id", "label_changes", ["event_id"])
    op.create_index("ix_label_changes_image_id", "label_changes", ["image_id"])


def downgrade() -> None:
    for table in ("label_changes", "promotions", "label_events", "images", "classes"):
        op.drop_table(table)  # drops its indexes too
