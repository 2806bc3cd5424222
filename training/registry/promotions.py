"""Which version serves: the promotion record, a row in the label database every worker and replica shares.

Kept in that database because it is the one every worker (and replica) already shares; its
owner is the Registry (:mod:`training.registry.serving`), and the live model polls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from training.labels.database import Database
from training.labels.errors import check_reason_and_actor
from training.labels.schema import PromotionRow


@dataclass(frozen=True)
class Promotion:
    tag: str
    created_at: datetime
    actor: str
    reason: str


def serving(database: Database, model_name: str) -> Promotion | None:
    """The latest promotion of ``model_name``, or None if none was ever recorded."""
    query = select(PromotionRow).where(PromotionRow.model_name == model_name).order_by(PromotionRow.id.desc()).limit(1)
    with database.read() as session:
        row = session.scalar(query)
        return None if row is None else Promotion(row.tag, row.created_at, row.actor, row.reason)


def promote(database: Database, model_name: str, tag: str, *, actor: str = "unknown", reason: str = "") -> Promotion:
    """Record that ``tag`` serves from now on; every worker polls this and swaps to it."""
    check_reason_and_actor(reason, actor)
    row = PromotionRow(model_name=model_name, tag=tag, created_at=datetime.now(UTC), actor=actor, reason=reason)
    with database.write() as session:
        session.add(row)
    return Promotion(row.tag, row.created_at, row.actor, row.reason)
