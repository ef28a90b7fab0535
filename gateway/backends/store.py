"""The broker's tables (migration 0005_backends): links, the push queue, remote items seen, poll state and
customers. The core knows none of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models import Base, UTCDateTime

QUEUE_STATUSES = ("queued", "done", "failed")
OPS = ("create", "comment", "attachment", "update", "participants")


class BackendLink(Base):
    """A local ticket brokered to a desk: our reference (the idempotency key written into the remote request)
    and, once known, the remote key. `remote_status` is the desk's status last seen (a status is applied
    locally only when it changes); `refresh_at` is the doorbell a webhook rings (re-read soon)."""

    __tablename__ = "backend_links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backend: Mapped[str] = mapped_column(String(50))
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    ref: Mapped[str] = mapped_column(String(64), unique=True)
    remote_key: Mapped[str | None] = mapped_column(String(100), nullable=True)
    remote_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    remote_status: Mapped[str | None] = mapped_column(String(100), nullable=True)
    customer_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    refresh_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("backend", "ticket_id", name="uq_backend_links_ticket"),
                      Index("ix_backend_links_remote", "backend", "remote_key"),
                      Index("ix_backend_links_refresh", "refresh_at"))


class BackendPush(Base):
    """One write to the desk, queued in the transaction of the change that caused it (like the outbox).
    Delivered in order per ticket; claimed in the database; backoff on temporary failures."""

    __tablename__ = "backend_queue"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backend: Mapped[str] = mapped_column(String(50))
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    op: Mapped[str] = mapped_column(String(16))  # create | comment | attachment | update | participants
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[str | None] = mapped_column(String(200), nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    __table_args__ = (Index("ix_backend_queue_due", "status", "next_attempt_at"),
                      Index("ix_backend_queue_ticket", "ticket_id", "status", "id"))


class BackendItem(Base):
    """A remote comment or attachment the gateway knows: one it wrote (out) or one it imported (in). Our own
    writes coming back are recognised here (and by their author, the integration account)."""

    __tablename__ = "backend_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backend: Mapped[str] = mapped_column(String(50))
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # comment | attachment
    remote_id: Mapped[str] = mapped_column(String(100))
    comment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    direction: Mapped[str] = mapped_column(String(8))  # out | in
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("backend", "kind", "remote_id", name="uq_backend_items_remote"),)


class BackendState(Base):
    """Per desk: where the poll got to, a poll asked for by a webhook, a pause the desk asked for (429)."""

    __tablename__ = "backend_state"
    backend: Mapped[str] = mapped_column(String(50), primary_key=True)
    polled_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    poll_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BackendCustomer(Base):
    """A customer found or created in the desk, by email (SMAX persons are created asynchronously:
    `pending_since` until the person can be found)."""

    __tablename__ = "backend_customers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backend: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(320))
    remote_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    pending_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("backend", "email", name="uq_backend_customers_email"),)
