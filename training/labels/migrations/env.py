"""Alembic's entry point for the label database: migrates the connection it is handed, nothing else.

There is no ``alembic.ini`` and no URL here: :func:`training.labels.migrate.upgrade_to_head`
opens the transaction (holding SQLite's write lock or PostgreSQL's advisory lock) and
passes its connection as ``config.attributes["connection"]``, so the check of the
current revision, the stamp and the upgrade are one transaction under one lock.
"""

from __future__ import annotations

from alembic import context

from training.labels.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the label database's migrations run through training.labels.migrate.upgrade_to_head, "
        "which hands them a connection; there is no alembic.ini"
    )
# render_as_batch: SQLite alters a table by copying it; autogenerate drafts then use batch operations.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():  # inside the caller's transaction: Alembic opens none of its own
    context.run_migrations()
