"""One module per schema revision, written by hand; Alembic orders them by ``down_revision``."""
