"""The label database's Alembic revisions (``versions/``) and ``env.py``, run by :mod:`training.labels.migrate`."""
