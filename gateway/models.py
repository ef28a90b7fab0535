"""The store: SQLAlchemy 2.x models. The schema itself is created by Alembic (gateway/migrations)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

STATUSES = ("open", "in_progress", "pending", "resolved", "closed")
PRIORITIES = ("low", "medium", "high", "critical")
TYPES = ("incident", "problem", "service_request", "change_request")
ROLES = ("customer", "staff", "correspondent")  # correspondent: wrote to us, has no account
MAIL_OUTCOMES = ("received", "ticket", "comment", "ignored", "duplicate", "rejected", "quarantined")
VISIBILITIES = ("reporter-only", "organisation")  # who of an organisation takes part in its tickets
# Ticket links as stored (ticket_id -> other_ticket_id): "A blocks B", "A duplicates B", "A caused-by B" (B is
# the root cause), "A relates B"; the automatic ones of threading: related, follow_up_of. Each is read from the
# other end by its inverse (gateway.workflow.LINK_INVERSE).
LINK_KINDS = ("relates", "duplicates", "caused-by", "blocks", "related", "follow_up_of")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (naive storage) and PostgreSQL (timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Organisation(Base):
    __tablename__ = "organisations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # reporter-only: a ticket's participants are its reporter and watchers; organisation: every member too
    visibility: Mapped[str] = mapped_column(String(16), default="reporter-only")
    domains: Mapped[list[OrganisationDomain]] = relationship(back_populates="organisation", lazy="selectin")


class OrganisationDomain(Base):
    __tablename__ = "organisation_domains"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    domain: Mapped[str] = mapped_column(String(255), unique=True)
    organisation: Mapped[Organisation] = relationship(back_populates="domains")


class Contact(Base):
    """A person who writes to or works at the help desk (customer or staff)."""

    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(16), default="customer")
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"), nullable=True)
    auto_registered: Mapped[bool] = mapped_column(Boolean, default=False)
    undeliverable: Mapped[bool] = mapped_column(Boolean, default=False)
    undeliverable_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Why the gateway may mail this address on its own (it wrote to the gateway, an admin added it); None: it
    # was only named by others (Cc) and is mailed only where its watcher row says so (gateway.relay).
    vouched: Mapped[str | None] = mapped_column(String(200), nullable=True, default=None)
    # Blocked (`users block`): every mail from this address is quarantined with blocked_reason
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    blocked_reason: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    organisation: Mapped[Organisation | None] = relationship(lazy="joined")

    @property
    def is_staff(self) -> bool:
        return self.role == "staff"


class Ticket(Base):
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    subject: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")
    priority: Mapped[str] = mapped_column(String(16), default="medium")
    type: Mapped[str] = mapped_column(String(24), default="incident")
    reporter_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    # The address that really wrote the first mail (differs from the reporter under 'default-reporter').
    sender_email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"), nullable=True)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), nullable=True)
    group: Mapped[str | None] = mapped_column("group_name", String(100), nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")  # the first mail's visible text
    description_full: Mapped[str] = mapped_column(Text, default="")  # the first mail's whole text
    description_html: Mapped[str | None] = mapped_column(Text, nullable=True)  # nh3-sanitised
    source_mail_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the mail that opened it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # SLA (filled by the SLA feature)
    sla_policy: Mapped[str | None] = mapped_column(String(100), nullable=True)
    first_response_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    response_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolution_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sla_paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    remind_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Merged into another ticket (closed; mail to this one lands on that one: gateway.tickets.Tickets.followed)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"), nullable=True)
    # Who spoke last in public: True while the customer waits for an answer (the work queue's order)
    customer_spoke_last: Mapped[bool] = mapped_column(Boolean, default=True)

    reporter: Mapped[Contact] = relationship(foreign_keys=[reporter_id], lazy="joined")
    assignee: Mapped[Contact | None] = relationship(foreign_keys=[assignee_id], lazy="joined")
    organisation: Mapped[Organisation | None] = relationship(lazy="joined")
    watchers: Mapped[list[Watcher]] = relationship(back_populates="ticket", lazy="selectin",
                                                   cascade="all, delete-orphan")
    comments: Mapped[list[Comment]] = relationship(back_populates="ticket", order_by="Comment.id",
                                                   lazy="select", cascade="all, delete-orphan")
    attachments: Mapped[list[Attachment]] = relationship(back_populates="ticket", order_by="Attachment.id",
                                                         lazy="select", cascade="all, delete-orphan")

    __table_args__ = (
        Index("ix_tickets_status", "status"),
        Index("ix_tickets_response_due", "response_due_at"),
        Index("ix_tickets_resolution_due", "resolution_due_at"),
        Index("ix_tickets_remind_at", "remind_at"),
    )


class TicketLink(Base):
    __tablename__ = "ticket_links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    other_ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32), default="related")  # one of LINK_KINDS
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("ticket_id", "other_ticket_id", "kind"),)


class TimeEntry(Base):
    """Time spent on a ticket: who, when, how many minutes, what for."""

    __tablename__ = "time_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"), nullable=True)
    author_email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    minutes: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(Text, default="")
    spent_at: Mapped[datetime] = mapped_column(UTCDateTime)  # when the work was done
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Watcher(Base):
    __tablename__ = "watchers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Why the gateway may mail this watcher about this ticket (added by staff, Cc'd by an authenticated
    # participant); None: only if the contact itself is vouched for (gateway.relay.mailable).
    vouched: Mapped[str | None] = mapped_column(String(200), nullable=True, default=None)
    ticket: Mapped[Ticket] = relationship(back_populates="watchers")
    contact: Mapped[Contact] = relationship(lazy="joined")
    __table_args__ = (UniqueConstraint("ticket_id", "contact_id"),)


class Comment(Base):
    __tablename__ = "comments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), nullable=True)
    author_email: Mapped[str | None] = mapped_column(String(320), nullable=True)  # the real sender
    body: Mapped[str] = mapped_column(Text, default="")  # visible text (quotes/signature stripped)
    full_text: Mapped[str] = mapped_column(Text, default="")  # the whole text as received
    html: Mapped[str | None] = mapped_column(Text, nullable=True)  # nh3-sanitised HTML
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    by_staff: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(16), default="mail")  # mail | cli | system
    inbound_mail_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_mail.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ticket: Mapped[Ticket] = relationship(back_populates="comments")
    author: Mapped[Contact | None] = relationship(lazy="joined")
    attachments: Mapped[list[Attachment]] = relationship(back_populates="comment", lazy="selectin")
    inbound_mail: Mapped[InboundMail | None] = relationship(foreign_keys=[inbound_mail_id], lazy="select")


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    comment_id: Mapped[int | None] = mapped_column(ForeignKey("comments.id"), nullable=True)
    filename: Mapped[str] = mapped_column(Text)  # sanitised display name; never a storage path
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ticket: Mapped[Ticket] = relationship(back_populates="attachments")
    comment: Mapped[Comment | None] = relationship(back_populates="attachments")


class InboundMail(Base):
    """Every mail that reached the gateway, whatever became of it."""

    __tablename__ = "inbound_mail"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(16))  # smtp | lmtp | imap | stdin | file | maildir | mbox
    source_ref: Mapped[str | None] = mapped_column(Text, nullable=True)
    envelope_from: Mapped[str | None] = mapped_column(Text, nullable=True)
    envelope_to: Mapped[list[str]] = mapped_column(JSON, default=list)
    message_id: Mapped[str | None] = mapped_column(Text, nullable=True, index=True)
    sender: Mapped[str | None] = mapped_column(String(320), nullable=True)
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(16), default="received")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    trace: Mapped[list[str]] = mapped_column(JSON, default=list)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"), nullable=True)
    comment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Dedupe claims: set only on the one mail that produced something; unique so that two concurrent
    # deliveries of the same mail cannot both win (the loser retries and sees the duplicate).
    claim_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    claim_msgid: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)  # sha256(msgid|sender)
    # SMTP/LMTP session (or `ingest --client-ip/--helo`): the client's IP address and HELO name, for SPF
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    client_helo: Mapped[str | None] = mapped_column(String(255), nullable=True, default=None)
    # Sender authentication as found when the mail arrived (gateway.auth.AuthResult.as_dict), None: not checked
    auth: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)
    # Quarantine reasons an admin released by replaying the mail ('flood', 'sender authentication failed')
    released: Mapped[list[str] | None] = mapped_column(JSON, nullable=True, default=None)
    raw: Mapped[InboundRaw] = relationship(lazy="select", cascade="all, delete-orphan", uselist=False)
    __table_args__ = (Index("ix_inbound_mail_outcome", "outcome"),
                      # the flood cap counts a sender's mails in the hour before a mail arrived
                      Index("ix_inbound_mail_sender_received", "sender", "received_at"))


class InboundRaw(Base):
    """The raw bytes of an inbound mail, kept apart so that listing mail stays light."""

    __tablename__ = "inbound_raw"
    mail_id: Mapped[int] = mapped_column(ForeignKey("inbound_mail.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class TicketMessageId(Base):
    """Every Message-ID known for a ticket (inbound and outbound), for threading replies."""

    __tablename__ = "ticket_message_ids"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(Text, index=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(8), default="in")  # in | out
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("message_id", "ticket_id"),)


class Counter(Base):
    """Named counters (ticket numbers on SQLite; PostgreSQL uses the sequence ticket_numbers), incremented under a
    row lock."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


# SLA (gateway/sla) ---------------------------------------------------------------------------------------
class SlaPolicyRow(Base):
    """One SLA policy (see gateway.sla_policy.Policy). The first active match by `position` applies.

    Removed policies are kept (`removed_at` set) so that a policy seeded from the config and removed from
    the CLI stays removed; `policies add` with the same name brings it back."""

    __tablename__ = "sla_policies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    response_minutes: Mapped[int] = mapped_column(Integer)
    resolution_minutes: Mapped[int] = mapped_column(Integer)
    priorities: Mapped[list[str]] = mapped_column(JSON, default=list)
    types: Mapped[list[str]] = mapped_column(JSON, default=list)
    organisations: Mapped[list[str]] = mapped_column(JSON, default=list)
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    # {"tz": "Europe/Berlin", "days": [0, 1, 2, 3, 4], "start": "09:00", "end": "17:00", "holidays": [...]}
    calendar: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    warn_percent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    warn_minutes_before: Mapped[int | None] = mapped_column(Integer, nullable=True)
    escalate_to: Mapped[list[str]] = mapped_column(JSON, default=list)  # e.g. the team lead
    notify_assignee: Mapped[bool] = mapped_column(Boolean, default=True)
    notify_group: Mapped[bool] = mapped_column(Boolean, default=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[str] = mapped_column(String(16), default="cli")  # cli | config
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SlaClock(Base):
    """Per-ticket SLA bookkeeping kept by the SLA listener: derived warning times and `next_at`, the
    earliest instant at which the sweep has something to do for the ticket (NULL: nothing). The sweep
    selects `next_at <= now` through a partial index and never scans tickets."""

    __tablename__ = "sla_clocks"
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True)
    warn_response_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    warn_resolution_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # kept for reopen
    next_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SlaEscalation(Base):
    """One escalation (or pending reminder) sent: the unique (ticket, kind, deadline) row is the claim that
    makes it happen once, across restarts and instances. `suppressed`: recorded without a mail (a warning
    whose breach was already due when the sweep came)."""

    __tablename__ = "sla_escalations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # response_warning ... resolution_breach | pending_reminder
    deadline: Mapped[datetime] = mapped_column(UTCDateTime)  # the clock's deadline (or the remind_at)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)  # when it became due (warning time or deadline)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the sweep's "now"
    recipients: Mapped[list[str]] = mapped_column(JSON, default=list)
    suppressed: Mapped[bool] = mapped_column(Boolean, default=False)
    outbox_ref: Mapped[str | None] = mapped_column(String(64), nullable=True)
    __table_args__ = (
        UniqueConstraint("ticket_id", "kind", "deadline", name="uq_sla_escalations_once"),
        Index("ix_sla_escalations_sent_at", "sent_at"),
    )


# Sweep indexes: SLA clocks with something due (partial: only rows with a next_at), and pending
# reminders that are due (status = 'pending' AND remind_at <= now).
Index("ix_sla_clocks_next_at", SlaClock.next_at, SlaClock.ticket_id,
      sqlite_where=SlaClock.next_at.isnot(None), postgresql_where=SlaClock.next_at.isnot(None))
Index("ix_tickets_status_remind_at", Ticket.status, Ticket.remind_at)


# Outbound mail (gateway.outbound) ----------------------------------------------------------------------------
OUTBOX_STATUSES = ("queued", "sent", "failed", "suppressed")


class OutboxMail(Base):
    """One outgoing mail to one envelope recipient, written in the transaction of the change that caused it.

    Enqueueing is cheap: the row holds what identifies the mail (event, ticket, comment, recipient, the
    Message-ID and reply token fixed now) and in `params` the few values frozen at event time (old/new
    status, the trigger mail, the SLA figures, ...). The delivery round renders the templates and builds the
    bytes on the row's first claim and stores them in `raw` (NULL until then), so a resend (after a crash or a
    lost answer) is identical and keeps its Message-ID; `subject` is filled in at the same time. The rows are
    also the rate-limit bookkeeping (per ticket, per recipient): `suppressed` rows record mail that a cap or a
    rule held back, with the reason in last_error (the cap decision is taken at enqueue)."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"), nullable=True)
    comment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    event: Mapped[str] = mapped_column(String(32))  # ticket_created | staff_new_ticket | comment | ...
    batch: Mapped[str] = mapped_column(String(32))  # one per event: the notification round
    caused_by_mail: Mapped[bool] = mapped_column(Boolean, default=False)  # counts against the rate caps
    recipient: Mapped[str] = mapped_column(String(320))  # the one envelope recipient
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"), nullable=True)
    token: Mapped[str | None] = mapped_column(String(64), nullable=True)  # reply/VERP token
    envelope_from: Mapped[str] = mapped_column(String(320))
    message_id: Mapped[str] = mapped_column(String(255), unique=True)  # without <>
    subject: Mapped[str] = mapped_column(Text, default="")  # filled in when the bytes are built
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # values frozen at enqueue
    raw: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True, nullable=True)  # built on first claim
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | sent | failed | suppressed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        # rate caps at enqueue count from the index alone (no table lookups per counted mail)
        Index("ix_outbox_recipient", "recipient", "caused_by_mail", "created_at", "status"),
        Index("ix_outbox_ticket", "ticket_id", "created_at"),
        Index("ix_outbox_token", "token"),
    )


# IMAP poller (gateway/imap.py) -----------------------------------------------------------------------------
class ImapSeen(Base):
    """A message the IMAP poller stored, keyed on (account, folder, UIDVALIDITY, UID).

    state: stored (in inbound_mail, not threaded yet) | processed (threaded; `outcome` says how) | moved (left
    the folder for `moved_to`) | filed (a row keyed in processed_folder: where a moved message now is, from the
    server's COPYUID, so a mail threaded after its move and quarantined can be refiled to the quarantine
    folder). Outcome is set once the mail is threaded (threading follows the move on the fast path). A message
    found again in the folder that was stored before is only moved, never stored twice."""

    __tablename__ = "imap_seen"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account: Mapped[str] = mapped_column(String(100))
    folder: Mapped[str] = mapped_column(String(500))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    mail_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_mail.id", ondelete="SET NULL"), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="stored")
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    moved_to: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("account", "folder", "uidvalidity", "uid", name="uq_imap_seen_key"),
                      Index("ix_imap_seen_mail_id", "mail_id"))


# Leases (gateway/lease.py) --------------------------------------------------------------------------------
class Lease(Base):
    """A named lease shared by every instance on one database (gateway.lease): `holder` may do the work named
    `name` (e.g. 'imap:support', the one poller of that mailbox) until `expires_at`, and renews it while it
    works. Times are seconds since the epoch on the database's clock (every instance compares against the same
    clock); `generation` counts the hand-overs (a holder that sees another generation lost the lease)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), default="")
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[float] = mapped_column(Float, default=0.0)
    acquired_at: Mapped[float] = mapped_column(Float, default=0.0)
    renewed_at: Mapped[float] = mapped_column(Float, default=0.0)


# HTTP API (gateway/api, gateway/ops) -----------------------------------------------------------------------
TOKEN_SCOPES = ("read", "write", "admin")


class ApiToken(Base):
    """A Bearer token of the HTTP API. Only the sha256 of the secret is kept (the secret is 256 random bits,
    shown once by `tokens create`); `prefix` (the secret's first characters) tells tokens apart in lists."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    scope: Mapped[str] = mapped_column(String(8))  # read | write | admin
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ApiIdempotency(Base):
    """A create that must happen once: `key` is 'key:<Idempotency-Key header>' or 'ext:<external_id>'; a
    retried create finds the ticket it made. `request_sha256`: the request an Idempotency-Key came with (the
    same key with another request is refused)."""

    __tablename__ = "api_idempotency"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(300), unique=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), nullable=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (Index("ix_api_idempotency_ticket", "ticket_id"),)


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class (typed: `Model.__table__` is only a FromClause to a type checker)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table
