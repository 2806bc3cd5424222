"""The label database's tables (SQLAlchemy ORM); migrations in ``training/labels/migrations`` change them.

``images`` holds each file's curated ``label`` (``folder_label`` is what its folder
said); ``label_events``/``label_changes`` are the append-only audit trail;
``promotions`` which model version serves; ``dataset`` this database's identity.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class DatasetRow(Base):
    """The dataset this database curates: a single row (``id`` 1) with its identity and revision."""

    __tablename__ = "dataset"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(36), unique=True)  # never changes
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # bumped by every write that changes labels or images (migration 0003): what caches key on
    revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class PromotionRow(Base):
    """Which model version serves: the newest row per model name wins (kept as an audit trail)."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(256), index=True)
    tag: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(String(2048), default="")


class ImageRow(Base):
    __tablename__ = "images"
    # a split (or one label of it) in path order, counted from the index alone: paging (migration 0005)
    __table_args__ = (
        Index("ix_images_split_present_path", "split", "present", "path"),
        Index("ix_images_split_label_present_path", "split", "label", "present", "path"),
    )

    image_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), unique=True, index=True)
    split: Mapped[str] = mapped_column(String(64), index=True)
    folder_label: Mapped[str] = mapped_column(String(256))
    label: Mapped[str] = mapped_column(String(256), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    present: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    # the dataset revision of this row's last change (migration 0004): readers follow changes by it
    revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", index=True)
    # in a relabel or confirm that no undo reverted: a person decided on this image
    reviewed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ClassRow(Base):
    __tablename__ = "classes"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)


class EventRow(Base):
    __tablename__ = "label_events"

    event_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # relabel | confirm | undo | move
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(String(2048), default="")
    reverts_event_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_events.event_id"), unique=True, nullable=True
    )
    changes: Mapped[list[ChangeRow]] = relationship(back_populates="event", order_by="ChangeRow.image_id")


class ChangeRow(Base):
    __tablename__ = "label_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("label_events.event_id"), index=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.image_id"), index=True)
    old_label: Mapped[str] = mapped_column(String(256))
    new_label: Mapped[str] = mapped_column(String(256))
    event: Mapped[EventRow] = relationship(back_populates="changes")
