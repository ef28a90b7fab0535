"""The SQL store (SQLAlchemy; SQLite and PostgreSQL): the handlers' questions answered by the database, and every
speed-up of the pipeline's database work, in this one module.

The speed-ups, each marked where it is made:
- what is loaded ahead: `prefetch`, the lookups a batch's next mails' handlers declared, a few queries for all of
  them (instead of a few for each): claims, contacts and their domains' organisations, tickets, the flood counts;
- what is remembered for the transaction (gateway.store.memo) and when it is forgotten: `StoreDirectory` and
  `StoreTickets` consult the memos and forget what they write; nobody else in the pipeline does;
- the plain INSERTs: `insert_row`, `insert_attached` (one INSERT instead of a unit-of-work flush), the mail ids
  handed out ahead (`preallocated_mail_id`); a new comment (`StoreTickets.write_comment`);
- the plain UPDATE of one row where nothing else is pending (`flush_row`: a mail's outcome, a commented ticket), and
  on SQLite a stored mail's dedupe claims written with its outcome (`defer_claims`, `claims_due`);
- the driver-level savepoints (`direct_savepoints`), installed by `session_factory`.

None of it decides anything: outcomes, traces and rows are the same with or without it (tests/integration/
test_parse_ahead.py runs the same mails both ways and compares the tables).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, event, func, insert, literal, or_, select, union_all, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import MANYTOONE, Session, make_transient_to_detached, sessionmaker
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.sql.elements import ClauseElement

from gateway.models import (
    Attachment,
    Comment,
    Contact,
    InboundMail,
    InboundRaw,
    Organisation,
    OrganisationDomain,
    OutboxMail,
    Ticket,
    TicketMessageId,
    table_of,
)
from gateway.store import raw as raw_io
from gateway.store.base import Asks, ClaimHolder, Flow, Originals, stored_forms
from gateway.store.memo import (
    ABSENT_CLAIMS,
    ABSENT_CONTACTS,
    ABSENT_NUMBERS,
    CONTACTS_FOUND,
    DOMAINS_FOUND,
    KNOWN_MESSAGE_IDS,
    MADE_BY,
    MAIL_IDS,
    NO_ORGANISATION,
    STAFF,
    TICKETS_FOUND,
    drop_all,
    drop_memo,
    forget_found,
    found_row,
    found_rows,
    write_locked_memo,
)
from gateway.tickets import LIGHT, TICKETS_BY_MESSAGE_ID, Directory, Tickets, normalise_email

if TYPE_CHECKING:
    from gateway.blobs import BlobStore
    from gateway.clock import Clock
    from gateway.config import Config
    from gateway.events import Event, Listeners


# Engine and sessions ---------------------------------------------------------------------------------------
def direct_savepoints(engine: Engine) -> None:
    """SAVEPOINT, RELEASE and ROLLBACK TO on the driver's connection, not through a statement execution: the
    same three SQL commands, without SQLAlchemy's execution machinery around each (it cost more than the
    savepoint itself: a batch import takes one savepoint per mail). SQLAlchemy's savepoint bookkeeping
    (Connection.begin_nested, the session's) is unchanged: only the dialect's hooks that send the command are.
    SQLite only (its driver raises sqlite3.OperationalError directly: gateway.db.is_unavailable knows it)."""
    if engine.dialect.name != "sqlite":
        return

    def savepoint(conn: Connection, name: str) -> None:
        conn.connection.driver_connection.execute(f"SAVEPOINT {name}")  # type: ignore[union-attr]

    def release(conn: Connection, name: str) -> None:
        conn.connection.driver_connection.execute(f"RELEASE SAVEPOINT {name}")  # type: ignore[union-attr]

    def rollback_to(conn: Connection, name: str) -> None:
        conn.connection.driver_connection.execute(f"ROLLBACK TO SAVEPOINT {name}")  # type: ignore[union-attr]

    engine.dialect.do_savepoint = savepoint  # type: ignore[method-assign,assignment]
    engine.dialect.do_release_savepoint = release  # type: ignore[method-assign,assignment]
    engine.dialect.do_rollback_to_savepoint = rollback_to  # type: ignore[method-assign,assignment]


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """The app's sessions: the memos and the rows written by `insert_attached` follow the transactions."""
    direct_savepoints(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    # a rollback (a savepoint's too) may undo what a memo remembers: drop them all
    event.listen(factory, "after_soft_rollback", lambda session, _previous: drop_all(session))
    event.listen(factory, "after_soft_rollback", _expunge_rolled_back)
    event.listen(factory, "after_soft_rollback", _claims_rolled_back)
    event.listen(factory, "after_transaction_end", _claims_ended)
    event.listen(factory, "after_commit", lambda session: session.info.pop(_ATTACHED, None))
    return factory


# Plain INSERTs ---------------------------------------------------------------------------------------------
_ATTACHED = "tg.attached"


def insert_row(session: Session, obj: Any, *, given_only: bool = False) -> None:
    """Write a new object's row with one plain INSERT, the object left outside the session. For a new row
    whose many-to-one relationships point at persistent objects (or none): the foreign keys are taken from
    them, every column not given gets its default on the object too, and a key the database assigns is set
    on it. (A flush would do the same through the unit of work, which costs several times the INSERT.)
    given_only: a column given no value and without a default is left out, as a flush leaves it (the
    database's value: a JSON column NULL, where it is JSON null otherwise): a mail just stored."""
    stmt, rels, cols = _insert_plan(type(obj))
    state = sa_inspect(obj)
    assert state.transient, "insert_row takes a new object, not yet in a session"
    given = state.dict
    for key, pairs in rels:  # many-to-one: the foreign key columns from the related object
        if key in given:
            other = given[key]
            assert other is None or sa_inspect(other).persistent, f"{key}: the related object is not written yet"
            for local, remote in pairs:
                setattr(obj, local, None if other is None else getattr(other, remote))
    values: dict[str, Any] = {}
    assigned = []  # primary key attributes the database assigns
    for key, col_key, primary, d in cols:
        if key not in given:
            if primary:
                assigned.append(key)
                continue
            if d is None and given_only:
                continue
            setattr(obj, key, None if d is None else (d.arg(None) if d.is_callable else d.arg))
        values[col_key] = given[key]
    pk = session.connection().execute(stmt, values).inserted_primary_key
    if assigned:
        assert pk is not None
        for key in assigned:
            setattr(obj, key, pk[0])


_PLANS: dict[type, tuple[Any, list[tuple[str, list[tuple[str, str]]]], list[tuple[str, str, bool, Any]]]] = {}


def _insert_plan(cls: type) -> tuple[Any, list[tuple[str, list[tuple[str, str]]]], list[tuple[str, str, bool, Any]]]:
    """`insert_row`'s reading of a mapped class, made once per class (the mapper's relationships and columns were
    walked for every row, and its INSERT built anew): the INSERT; the many-to-one relationships as (key, [(local
    attribute, the related object's attribute)]); the columns as (attribute, column, primary key, default)."""
    plan = _PLANS.get(cls)
    if plan is None:
        mapper: Any = sa_inspect(cls)
        rels = [(rel.key, [(mapper.get_property_by_column(local).key, rel.mapper.get_property_by_column(remote).key)
                           for local, remote in rel.local_remote_pairs])
                for rel in mapper.relationships if rel.direction is MANYTOONE]
        cols = [(attr.key, attr.columns[0].key, bool(attr.columns[0].primary_key), attr.columns[0].default)
                for attr in mapper.column_attrs]
        plan = _PLANS[cls] = (insert(mapper.local_table), rels, cols)
    return plan


def insert_attached(session: Session, obj: Any) -> None:
    """`insert_row`, then the object joins the session as persistent, as a flush would leave it. Its later
    changes are flushed as usual. When a transaction it was written in rolls back (a savepoint's too), it
    leaves the session, as a flushed object would (`_expunge_rolled_back`)."""
    insert_row(session, obj)
    make_transient_to_detached(obj)
    session.add(obj)
    tx = session.get_nested_transaction() or session.get_transaction()
    chain = []
    while tx is not None:
        chain.append(tx)
        tx = tx.parent
    session.info.setdefault(_ATTACHED, []).append((obj, chain))


def _expunge_rolled_back(session: Session, previous: Any) -> None:
    attached = session.info.get(_ATTACHED)
    if not attached:
        return
    keep = []
    for obj, chain in attached:
        if any(tx is previous for tx in chain):
            if obj in session:
                session.expunge(obj)
        else:
            keep.append((obj, chain))
    session.info[_ATTACHED] = keep


# One row's UPDATE without the unit of work -----------------------------------------------------------------
_UPDATES: dict[tuple[Any, frozenset[str]], Any] = {}  # (table, columns) -> its UPDATE, built once
_UPDATABLE: dict[Any, dict[str, str]] = {}  # mapper -> its plain columns, by attribute


def flush_row(session: Session, obj: Any) -> None:
    """`session.flush()` where the only change pending in the session is to columns of this one persistent row
    (a mail row getting its outcome: `Intake._record`): one plain UPDATE of the columns a flush would write, and
    the object left as a flush leaves it (its changes committed, known to the savepoint it was made in). The
    unit of work costs several times that UPDATE. Anything else pending (new, deleted or other changed objects, a
    relationship changed on this one): the flush itself."""
    state = sa_inspect(obj)
    if (not state.persistent or session.new or session.deleted or state.expired_attributes
            or len(state.mapper.primary_key) != 1 or any(o is not obj for o in session.dirty)):
        session.flush()
        return
    mapper = state.mapper
    columns = _UPDATABLE.get(mapper)
    if columns is None:  # attribute -> column, of the plain columns (one each, not the primary key)
        columns = _UPDATABLE[mapper] = {a.key: a.columns[0].key for a in mapper.column_attrs
                                        if len(a.columns) == 1 and not a.columns[0].primary_key}
    values: dict[str, Any] = {}
    for key, old in state.committed_state.items():
        col = columns.get(key)
        if col is None:
            session.flush()  # a relationship or an unusual column changed: the unit of work decides
            return
        new = state.dict.get(key)
        if isinstance(new, ClauseElement) or hasattr(new, "__clause_element__"):  # a SQL expression as the value
            session.flush()
            return
        if old is NO_VALUE or not state.manager[key].impl.is_equal(new, old):  # as persistence.py compares
            values[col] = new
    if values:
        table = mapper.local_table
        cols = frozenset(values)
        stmt = _UPDATES.get((table, cols))
        if stmt is None:
            pk = mapper.primary_key[0]
            stmt = _UPDATES[(table, cols)] = (update(table).where(pk == bindparam("pk_"))
                                              .values({c: bindparam(c) for c in sorted(cols)}))
        values["pk_"] = state.identity[0]
        session.connection().execute(stmt, values)
    # what the flush does after its UPDATE (sqlalchemy.orm.session: _register_altered, then the state's commit):
    # a savepoint rolled back later expires the object, as it expires a flushed one
    session._register_altered([state])
    state._commit_all(state.dict, session.identity_map)


# Dedupe claims made on SQLite: written with the mail row's outcome ------------------------------------------
_CLAIMS = "tg.claims"  # mail id -> (sha256, Message-ID claim, the transactions open when it was made)


def defer_claims(session: Session, mail: InboundMail, sha256: str, msgid_claim: str | None) -> None:
    """A stored mail's dedupe claims, kept aside until its outcome is recorded (`claims_due`): then they go into
    the one UPDATE of its row, where they made an UPDATE of their own (and a unit-of-work flush, the next one
    after the claim: a notification's) before. Dropped when the savepoint they were made in rolls back, as the
    unflushed change on the row would be."""
    tx = session.get_nested_transaction() or session.get_transaction()
    chain = []
    while tx is not None:
        chain.append(tx)
        tx = tx.parent
    session.info.setdefault(_CLAIMS, {})[mail.id] = (sha256, msgid_claim, chain)


def claims_due(session: Session, mail: InboundMail) -> None:
    """The claims `defer_claims` kept for this mail, set on its row now (its outcome is being recorded)."""
    held = session.info.get(_CLAIMS)
    if held and mail.id in held:
        sha256, msgid_claim, _ = held.pop(mail.id)
        mail.claim_sha256 = sha256
        mail.claim_msgid = msgid_claim


def _claims_ended(session: Session, transaction: Any) -> None:
    # the session's transaction ended (not a savepoint: after_commit fires for a released savepoint too, and a
    # notification's savepoint is released between a claim and its outcome)
    if transaction.parent is None:
        session.info.pop(_CLAIMS, None)


def _claims_rolled_back(session: Session, previous: Any) -> None:
    held = session.info.get(_CLAIMS)
    if held:
        for mail_id in [i for i, (_, _, chain) in held.items() if any(tx is previous for tx in chain)]:
            del held[mail_id]


_RAWS = table_of(InboundRaw)


def insert_raw(session: Session, mail_id: int, raw: bytes) -> None:
    """The raw bytes of a batch's mail row: one plain INSERT (the row is written apart from its mail row, which
    is written once at the end: `insert_row`). A large mail: gateway.store.raw (SQLite: no extra copies)."""
    if len(raw) >= raw_io.BIG:
        raw_io.insert_raw(session, mail_id, raw)
        return
    session.connection().execute(insert(_RAWS), [{"mail_id": mail_id, "data": raw}])


_LAST_MAIL_ID = select(func.coalesce(func.max(InboundMail.id), 0))


def preallocated_mail_id(session: Session) -> int | None:
    """The next mail row's id, known before the row is written, where the transaction holds the write lock
    (SQLite: nobody else adds mail rows meanwhile; every row of this transaction takes its id from here). A new
    ticket refers to its mail by this id, and the mail row is written once, at the end, with its outcome and
    trace (`insert_row`). None elsewhere: the row is written first and updated at the end."""
    memo = write_locked_memo(session, MAIL_IDS)
    if memo is None:
        return None
    last = memo.get("last")
    if last is None:
        last = session.connection().execute(_LAST_MAIL_ID).scalar_one()
    memo["last"] = last + 1
    return int(last + 1)


# What the transaction remembers -----------------------------------------------------------------------------
def _remembered(session: Session, found: str, absent: str, key: Any, ask: Callable[[Any], Any], *,
                note_absent: bool = False) -> Any:
    """The row of a unique key: the one the session found before; else None where the transaction knows there
    is none (the memo `absent`: loaded ahead, or noted here with note_absent); else asked, and remembered."""
    row = found_row(session, found, key)
    if row is not None:
        return row
    none = write_locked_memo(session, absent)
    if none is not None and key in none:
        return None
    row = ask(key)
    if row is not None:
        found_rows(session, found)[key] = row
    elif note_absent and none is not None:
        none[key] = True
    return row


class StoreDirectory(Directory):
    """gateway.tickets.Directory with what the session found (contacts by address, organisations by domain)
    and the transaction's memos (addresses known to have no contact: loaded ahead by `prefetch`; domains known
    to have no organisation); it forgets what it writes."""

    def contact(self, email: str) -> Contact | None:
        # a contact registered in this transaction is remembered (`written`), not looked up: it may not be
        # flushed yet (register(flush=False): written with the ticket or comment)
        return _remembered(self.s, CONTACTS_FOUND, ABSENT_CONTACTS, normalise_email(email), super().contact)

    def organisation_for_domain(self, domain: str) -> Organisation | None:
        return _remembered(self.s, DOMAINS_FOUND, NO_ORGANISATION, domain.lower(), super().organisation_for_domain,
                           note_absent=True)

    def written(self, c: Contact, *, staff: bool) -> None:
        found_rows(self.s, CONTACTS_FOUND)[c.email] = c
        absent = write_locked_memo(self.s, ABSENT_CONTACTS)
        if absent:
            absent.pop(c.email, None)
        if staff:
            drop_memo(self.s, STAFF)

    def organisations_changed(self) -> None:
        drop_memo(self.s, NO_ORGANISATION)
        forget_found(self.s, DOMAINS_FOUND)

    def staff_changed(self) -> None:
        drop_memo(self.s, STAFF)

    def contact_removed(self) -> None:
        drop_memo(self.s, STAFF)
        forget_found(self.s, CONTACTS_FOUND)


class StoreTickets(Tickets):
    """gateway.tickets.Tickets with the transaction's memos (numbers known to exist nowhere, which tickets know
    a Message-ID: loaded ahead by `prefetch`), forgotten as rows for them are written; a new ticket (and the
    contact registered for it) written by one plain INSERT each."""

    def get(self, number: int) -> Ticket | None:
        return _remembered(self.s, TICKETS_FOUND, ABSENT_NUMBERS, number, super().get)

    def found(self, t: Ticket) -> None:
        found_rows(self.s, TICKETS_FOUND)[t.number] = t

    def known_message_ids(self, ids: Sequence[str]) -> list[tuple[str, int]] | None:
        known = write_locked_memo(self.s, KNOWN_MESSAGE_IDS)
        if known is None or not all(mid in known for mid in ids):
            return None
        return [(mid, tid) for mid in ids for tid in known[mid]]

    def number_taken(self, number: int) -> None:
        absent = write_locked_memo(self.s, ABSENT_NUMBERS)
        if absent:
            absent.pop(number, None)

    def message_ids_written(self, ids: Iterable[str] | None) -> None:
        message_ids_written(self.s, ids)

    def write_new(self, objs: Sequence[Any]) -> None:
        for obj in objs:
            if sa_inspect(obj).pending:  # registered for this mail (Directory.register(flush=False))
                self.s.expunge(obj)
            insert_attached(self.s, obj)  # one INSERT, no unit-of-work flush


    def write_comment(self, c: Comment, ticket: Ticket) -> None:
        # where nothing else is pending but its author (registered for this mail) and its ticket's new times: one
        # INSERT (two with the author) and the ticket's one UPDATE, as the flush would write them; else the flush
        s = self.s
        author, mail = c.author, c.inbound_mail
        fresh = author is not None and sa_inspect(author).pending
        if ((mail is None or sa_inspect(mail).persistent) and not s.deleted
                and all(o is author for o in s.new) and all(o is ticket for o in s.dirty)):
            self.write_new([author, c] if fresh else [c])
            flush_row(s, ticket)
            return
        super().write_comment(c, ticket)


def message_ids_written(session: Session, ids: Iterable[str] | None) -> None:
    """Rows of these Message-IDs were just written for a ticket (None: any, moved by a merge): what this
    transaction knew of them is not true any more (the notifications' outgoing Message-IDs come here too)."""
    if ids is None:
        drop_memo(session, KNOWN_MESSAGE_IDS)
        return
    known = write_locked_memo(session, KNOWN_MESSAGE_IDS)
    if known:
        for mid in ids:
            known.pop(mid, None)


def directory(session: Session, clock: Clock) -> Directory:
    """The contacts and organisations of any transaction (the CLI's and the API's too): what it writes is
    forgotten by the memos of the transaction (a new staff contact: the staff the notifications remember)."""
    return StoreDirectory(session, clock)


# What is loaded ahead ---------------------------------------------------------------------------------------
_CLAIMED = (select(InboundMail.claim_sha256, InboundMail.claim_msgid)
            .where(or_(InboundMail.claim_sha256.in_(bindparam("shas", expanding=True)),
                       InboundMail.claim_msgid.in_(bindparam("msgids", expanding=True)))))
_CONTACTS_BY_EMAIL = select(Contact).where(Contact.email.in_(bindparam("emails", expanding=True)))
_DOMAINS = select(OrganisationDomain).where(OrganisationDomain.domain.in_(bindparam("domains", expanding=True)))
_TICKETS_BY_ID_OR_NUMBER = (select(Ticket).options(*LIGHT)
                            .where(Ticket.id.in_(bindparam("ids", expanding=True))
                                   | Ticket.number.in_(bindparam("numbers", expanding=True))))


def prefetch(session: Session, asks: Asks, listeners: Listeners) -> None:
    """What the handlers declared they will ask for the next mails of a batch (gateway.pipeline.declared), in a
    few queries for all of them: what is found is loaded into the session (or remembered by address and number)
    as the handlers' own lookups would load it; what is found nowhere is remembered as absent, only where the
    transaction holds the write lock (SQLite: no other writer can add it meanwhile; whoever writes such a key in
    this transaction forgets it, and any rollback forgets them all; on PostgreSQL each handler still asks). A
    listener with a `prefetch(session, sender addresses)` method makes its own (notifications: rate caps)."""
    if not asks.claims:
        return
    with session.no_autoflush:
        _preload_claims(session, asks.claims)
        _preload_contacts(session, asks.emails)
        _preload_tickets(session, asks.message_ids, asks.numbers)
        _preload_made(session, asks.made_by)
        if asks.senders:
            for listener in listeners:
                ahead = getattr(listener, "prefetch", None)
                if ahead is not None:
                    ahead(session, asks.senders)


def _preload_claims(session: Session, claims: Iterable[tuple[str, str | None]]) -> None:
    """Which of these (sha256, Message-ID claim) pairs no mail holds, in one query (SQLite only)."""
    absent = write_locked_memo(session, ABSENT_CLAIMS)
    if absent is None:
        return
    keys = [("s", sha) for sha, _ in claims] + [("m", m) for _, m in claims if m]
    if not keys:
        return
    held = set()
    for sha, msgid in session.connection().execute(
            _CLAIMED, {"shas": sorted({k for t, k in keys if t == "s"}),
                       "msgids": sorted({k for t, k in keys if t == "m"})}):
        held.add(("s", sha))
        held.add(("m", msgid))
    absent.update(dict.fromkeys(set(keys) - held, True))


def _preload_contacts(session: Session, emails: Iterable[str]) -> None:
    """These addresses' contacts in one query, remembered as `Directory.contact` remembers one it found; an
    address found nowhere is known absent (SQLite) until a contact is registered for it."""
    wanted = {normalise_email(e) for e in emails if e}
    wanted = {e for e in wanted if found_row(session, CONTACTS_FOUND, e) is None}
    if not wanted:
        return
    found = session.scalars(_CONTACTS_BY_EMAIL, {"emails": sorted(wanted)}).unique().all()
    known = found_rows(session, CONTACTS_FOUND)
    for c in found:
        known[c.email] = c
    absent = write_locked_memo(session, ABSENT_CONTACTS)
    if absent is not None:
        new = wanted.difference(c.email for c in found)
        absent.update(dict.fromkeys(new, True))
        _preload_domains(session, {e.rpartition("@")[2].lower() for e in new})


def _preload_domains(session: Session, domains: set[str]) -> None:
    """The organisations of these domains (of addresses without a contact: registering one looks its domain up),
    in one query, remembered as `Directory.organisation_for_domain` remembers them; a domain of no organisation
    is known as such (SQLite) until an organisation or domain is added."""
    none = write_locked_memo(session, NO_ORGANISATION)
    if none is None:
        return
    domains = {d for d in domains if d and d not in none and found_row(session, DOMAINS_FOUND, d) is None}
    if not domains:
        return
    known = found_rows(session, DOMAINS_FOUND)
    for od in session.scalars(_DOMAINS, {"domains": sorted(domains)}).all():
        known[od.domain] = od.organisation
        domains.discard(od.domain)
    none.update(dict.fromkeys(domains, True))


def _preload_tickets(session: Session, message_ids: Iterable[str], numbers: Iterable[int]) -> None:
    """The tickets these Message-IDs and subject-tag numbers name, in two queries (and one for their watchers):
    later lookups find them in the session. On SQLite, which tickets know each Message-ID and which numbers exist
    nowhere is remembered too, until a row for it is written."""
    ids = list(dict.fromkeys(m for m in message_ids if m))
    numbers = [n for n in dict.fromkeys(numbers) if found_row(session, TICKETS_FOUND, n) is None]
    if not ids and not numbers:
        return
    rows = session.connection().execute(TICKETS_BY_MESSAGE_ID, {"ids": ids}).all() if ids else []
    ticket_ids = sorted({r[1] for r in rows})
    found = session.scalars(_TICKETS_BY_ID_OR_NUMBER, {"ids": ticket_ids, "numbers": numbers}).all() \
        if ticket_ids or numbers else []
    known = found_rows(session, TICKETS_FOUND)
    for t in found:
        known[t.number] = t
    known_ids = write_locked_memo(session, KNOWN_MESSAGE_IDS)
    if known_ids is not None:
        tickets_of: dict[str, list[int]] = {mid: [] for mid in ids}
        for mid, tid in rows:
            tickets_of[mid].append(tid)
        known_ids.update((mid, tuple(tids)) for mid, tids in tickets_of.items())
    absent = write_locked_memo(session, ABSENT_NUMBERS)
    if absent is not None:
        absent.update(dict.fromkeys(set(numbers).difference(t.number for t in found), True))


_MADE_SPAN = (select(InboundMail.sender, InboundMail.received_at)
              .where(InboundMail.sender.in_(bindparam("senders", expanding=True)),
                     InboundMail.outcome.in_(("ticket", "comment")),
                     InboundMail.received_at >= bindparam("since"), InboundMail.received_at <= bindparam("until")))


def _preload_made(session: Session, made_by: Iterable[tuple[str, datetime, datetime]]) -> None:
    """The tickets and comments of these senders over the span of all the windows asked (`mails_made_by`), in one
    query (SQLite only: no other writer adds any meanwhile); each sender's are remembered with the span, and
    forgotten when a mail row of that sender gets its outcome (`made_written`)."""
    made = write_locked_memo(session, MADE_BY)
    if made is None:
        return
    asked = [(s.lower(), since, until) for s, since, until in made_by if s]
    if not asked:
        return
    since, until = min(a[1] for a in asked), max(a[2] for a in asked)
    senders = sorted({a[0] for a in asked})
    times: dict[str, list[datetime]] = {s: [] for s in senders}
    for row in session.connection().execute(_MADE_SPAN, {"senders": senders, "since": since, "until": until}):
        times[str(row.sender)].append(row.received_at)
    for sender, ats in times.items():
        made[sender] = (since, until, ats)


def made_written(session: Session, mail: InboundMail) -> None:
    """A mail row's outcome (and sender) was just written: what `_preload_made` remembered of its sender may
    count it now."""
    made = write_locked_memo(session, MADE_BY)
    if made and mail.sender:
        made.pop(mail.sender.lower(), None)


# The store -------------------------------------------------------------------------------------------------
_COLUMNS = (InboundMail.id, InboundMail.claim_sha256, InboundMail.outcome, InboundMail.ticket_id)
# built once (a statement built per mail costs more than running it)
_FIRST_BY_BYTES = (select(*_COLUMNS)
                   .where(InboundMail.claim_sha256 == bindparam("sha"), InboundMail.id != bindparam("id"))
                   .order_by(InboundMail.id).limit(1))
_FIRST_BY_BYTES_OR_MSGID = (select(*_COLUMNS)
                            .where(or_(InboundMail.claim_sha256 == bindparam("sha"),
                                       InboundMail.claim_msgid == bindparam("msgid")),
                                   InboundMail.id != bindparam("id"))
                            .order_by(InboundMail.id).limit(1))
_MADE = select(func.count(InboundMail.id)).where(
    InboundMail.sender == bindparam("sender"), InboundMail.outcome.in_(("ticket", "comment")),
    InboundMail.received_at >= bindparam("since"), InboundMail.received_at <= bindparam("until"))
_TOKEN_ISSUED = select(OutboxMail.recipient).where(OutboxMail.token == bindparam("token")).limit(1)
_ATTACHMENTS = table_of(Attachment)


class SqlStore:
    """gateway.store.base.Store on a session, inside the caller's transaction. imported, quiet: the events of an
    import of old mail (gateway.tickets.Tickets); dry_run: attachment bytes are not stored."""

    def __init__(self, session: Session, *, config: Config, clock: Clock, listeners: Listeners, blobs: BlobStore,
                 imported: bool = False, quiet: bool = False, dry_run: bool = False) -> None:
        self.session = session
        self.config = config
        self.clock = clock
        self.blobs = blobs
        self.dry_run = dry_run
        self.tickets = StoreTickets(session, clock=clock, listeners=listeners, imported=imported, quiet=quiet)
        self.directory = StoreDirectory(session, clock)

    def mail_id(self, mail: InboundMail) -> int:
        # A batch import writes its mail row as late as it can (the dedupe claims and, for a mail that ends
        # early, the outcome then go into its one INSERT): the first use writes it.
        state = sa_inspect(mail)
        if not state.persistent:
            if state.transient:
                self.session.add(mail)
            self.session.flush()
        return mail.id

    def emit(self, event: Event) -> None:
        self.tickets.emit(event)

    # Dedupe ----------------------------------------------------------------------------------------------
    def claim_holder(self, sha256: str, msgid_claim: str | None, own_id: int | None) -> ClaimHolder | None:
        absent = write_locked_memo(self.session, ABSENT_CLAIMS)
        if absent and ("s", sha256) in absent and (msgid_claim is None or ("m", msgid_claim) in absent):
            return None  # loaded ahead (`prefetch`): nobody holds either claim
        own = own_id if own_id is not None else 0  # 0: not written yet (a batch import), no row to skip
        # plain rows on the connection: no ORM objects, and no autoflush (a row not written yet gets its claims
        # in its INSERT, not in an UPDATE)
        if msgid_claim:
            first = self.session.connection().execute(
                _FIRST_BY_BYTES_OR_MSGID, {"sha": sha256, "msgid": msgid_claim, "id": own}).first()
        else:
            first = self.session.connection().execute(_FIRST_BY_BYTES, {"sha": sha256, "id": own}).first()
        if first is None:
            return None
        ticket = self.session.get(Ticket, first.ticket_id) if first.ticket_id is not None else None
        return ClaimHolder(first.id, first.claim_sha256, first.outcome, ticket.number if ticket else None)

    def claim(self, mail: InboundMail, sha256: str, msgid_claim: str | None) -> None:
        absent = write_locked_memo(self.session, ABSENT_CLAIMS)
        if absent:  # this mail holds them now
            absent.pop(("s", sha256), None)
            absent.pop(("m", msgid_claim), None)
        # a stored mail on PostgreSQL: a concurrent winner (another instance) makes this fail, and the intake runs
        # it again (a batch import's row fails the same way when it is written). SQLite has one writer, whose
        # transaction began IMMEDIATE (gateway.db): nobody can take a claim that `claim_holder` found free before
        # this transaction ends, so the claims of a stored mail go into its outcome's UPDATE (`defer_claims`)
        sqlite = self.session.get_bind().dialect.name == "sqlite"
        if mail.id is not None and sqlite and sa_inspect(mail).persistent:
            defer_claims(self.session, mail, sha256, msgid_claim)
            return
        mail.claim_sha256 = sha256
        mail.claim_msgid = msgid_claim
        if mail.id is not None and not sqlite:
            self.session.flush()

    # People ----------------------------------------------------------------------------------------------
    def contact(self, email: str) -> Contact | None:
        return self.directory.contact(email)

    def register(self, email: str, *, name: str = "", correspondent: bool = False, auto_registered: bool = False,
                 flush: bool = True) -> Contact:
        return self.directory.register(email, name=name, correspondent=correspondent,
                                       auto_registered=auto_registered, flush=flush)

    def add_contact(self, email: str, *, name: str = "") -> Contact:
        return self.directory.add_contact(email, name=name)

    def mails_made_by(self, sender: str, since: datetime, until: datetime) -> int:
        made = write_locked_memo(self.session, MADE_BY)
        held = made.get(sender.lower()) if made else None
        if held is not None and held[0] <= since and until <= held[1]:  # loaded ahead (`prefetch`)
            return sum(1 for at in held[2] if since <= at <= until)
        with self.session.no_autoflush:  # one query on (sender, received_at)
            return int(self.session.scalar(_MADE, {"sender": sender.lower(), "since": since, "until": until}) or 0)

    # Tickets ---------------------------------------------------------------------------------------------
    def ticket(self, number: int) -> Ticket | None:
        return self.tickets.get(number)

    def tickets_by_message_ids(self, ids: Sequence[str]) -> list[tuple[str, Ticket]]:
        return self.tickets.by_message_ids(ids)

    def followed(self, ticket: Ticket) -> Ticket:
        return self.tickets.followed(ticket)

    def is_participant(self, ticket: Ticket, contact: Contact | None, email: str | None) -> str | None:
        return self.tickets.is_participant(ticket, contact, email)

    def originals(self, message_ids: Sequence[str], own_id: int | None) -> Originals:
        forms = stored_forms(message_ids)
        if not forms:
            return Originals([], [])
        # one statement (PostgreSQL: one snapshot): the commit that threads an original changes its row and adds
        # its Message-ID to a ticket at once, so it is seen either waiting or known, never neither
        mails = (select(InboundMail.message_id.label("mid"), InboundMail.id.label("ref"),
                        literal("mail").label("kind"))
                 .where(InboundMail.message_id.in_(list(forms)), InboundMail.outcome == "received",
                        InboundMail.id != (own_id if own_id is not None else -1))
                 .order_by(InboundMail.id).limit(len(forms)).subquery())
        known = (select(TicketMessageId.message_id.label("mid"), TicketMessageId.ticket_id.label("ref"),
                        literal("ticket").label("kind"))
                 .where(TicketMessageId.message_id.in_(list(message_ids))).limit(len(forms)).subquery())
        rows = self.session.execute(union_all(select(mails), select(known))).all()
        order = {mid: i for i, mid in enumerate(message_ids)}
        waiting = sorted(((forms[str(mid)], int(ref)) for mid, ref, kind in rows if kind == "mail"),
                         key=lambda r: order[r[0]])
        threaded = sorted({str(mid) for mid, _, kind in rows if kind == "ticket"}, key=lambda m: order[m])
        return Originals(waiting, threaded)

    def token_issued(self, token: str) -> bool:
        return self.session.scalar(_TOKEN_ISSUED, {"token": token}) is not None

    # Writes ----------------------------------------------------------------------------------------------
    def create_ticket(self, *, subject: str, reporter: Contact, sender_email: str | None, description: str,
                      description_full: str, description_html: str | None, priority: str, type: str,
                      group: str | None, source_mail: InboundMail, at: datetime | None, message_ids: list[str],
                      watchers: Sequence[tuple[Contact, str | None]]) -> Ticket:
        return self.tickets.create(watchers=watchers, subject=subject, reporter=reporter, sender_email=sender_email,
                                   description=description, description_full=description_full,
                                   description_html=description_html, priority=priority, type=type, group=group,
                                   source_mail=source_mail, at=at, message_ids=message_ids)

    def add_comment(self, ticket: Ticket, *, author: Contact | None, author_email: str | None, body: str,
                    full_text: str = "", html: str | None = None, internal: bool = False, source: str = "mail",
                    mail: InboundMail | None = None, at: datetime | None = None,
                    seen_by: Iterable[str] = ()) -> Comment:
        return self.tickets.add_comment(ticket, author=author, author_email=author_email, body=body,
                                        full_text=full_text, html=html, internal=internal, source=source, mail=mail,
                                        at=at, seen_by=seen_by)

    def add_watcher(self, ticket: Ticket, contact: Contact, *, vouched: str | None = None) -> bool:
        return self.tickets.add_watcher(ticket, contact, vouched=vouched)

    def link(self, ticket: Ticket, other: Ticket, *, kind: str, reason: str) -> None:
        self.tickets.link(ticket, other, kind=kind, reason=reason)

    def remember_message_id(self, ticket: Ticket, message_id: str | None) -> None:
        self.tickets.remember_message_id(ticket, message_id, "in")

    def change(self, ticket: Ticket, *, by: Contact | None, at: datetime | None,
               **fields: Any) -> dict[str, tuple[Any, Any]]:
        return self.tickets.change(ticket, by=by, at=at, **fields)

    def unsubscribe(self, secret: bytes, token: str) -> tuple[Ticket, str] | None:
        return self.tickets.unsubscribe(secret, token)

    def put_blob(self, data: bytes) -> str:
        if self.dry_run:  # nothing is kept: the hash only
            import hashlib

            return hashlib.sha256(data).hexdigest()
        return self.blobs.put(data)

    def add_attachments(self, rows: list[dict[str, Any]]) -> None:
        # one statement for all of them, on the session's connection (its transaction and savepoint)
        self.session.connection().execute(insert(_ATTACHMENTS), rows)

    def workflow(self) -> Flow:
        from gateway.workflow import Workflow

        # the pipeline's tickets and directory: an import's changes stay quiet, the memos stay true
        return Workflow.of(self.session, clock=self.clock, listeners=self.tickets.listeners, config=self.config,
                           tickets=self.tickets, directory=self.directory)
