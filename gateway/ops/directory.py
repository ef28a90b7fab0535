"""Contacts and organisations, shared by the CLI (`users ...`, `orgs ...`) and the API (/api/v1/users,
/api/v1/organisations)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, exists, or_, select

from gateway.db import transaction
from gateway.models import VISIBILITIES, Comment, Contact, Organisation, OrganisationDomain, Ticket, Watcher
from gateway.ops import pages
from gateway.ops.errors import Conflict, Invalid, NotFound
from gateway.ops.pages import Page
from gateway.ops.tickets import check_email
from gateway.store.sql import directory

if TYPE_CHECKING:
    from gateway.app import App

ROLES = ("customer", "staff")
MAX_REASON = 500
_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")
MAX_DOMAINS = 100


def user_view(c: Contact) -> dict[str, Any]:
    return {"email": c.email, "name": c.name, "role": c.role,
            "organisation": c.organisation.name if c.organisation else None,
            "auto_registered": c.auto_registered, "undeliverable": c.undeliverable, "blocked": c.blocked,
            "blocked_reason": c.blocked_reason}


def org_view(o: Organisation) -> dict[str, Any]:
    return {"name": o.name, "domains": [d.domain for d in sorted(o.domains, key=lambda d: d.domain)],
            "visibility": o.visibility}


def list_users(app: App, *, role: str | None = None, limit: int = pages.DEFAULT_LIMIT,
               cursor: str | None = None) -> Page:
    """By email."""
    after = pages.str_key(pages.decode(cursor), "e") if cursor else None
    with app.sessions() as s:
        q = select(Contact).order_by(Contact.email)
        if role:
            if role not in ROLES:
                raise Invalid(f"role: one of {', '.join(ROLES)}", field="role")
            q = q.where(Contact.role == role)
        if after is not None:
            q = q.where(Contact.email > after)
        rows = list(s.scalars(q.limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([user_view(c) for c in rows], pages.encode({"e": rows[-1].email}) if more and rows else None)


def get_user(app: App, email: str) -> dict[str, Any]:
    with app.sessions() as s:
        c = directory(s, app.clock).contact(check_email(email, "email"))
        if c is None:
            raise NotFound(f"no contact {email}")
        return user_view(c)


def save_user(app: App, email: str, *, name: str | None = None, role: str | None = None,
              organisation: str | None = None, mode: str = "upsert") -> tuple[dict[str, Any], bool]:
    """Add or change a contact. mode: 'create' (an existing one is a conflict), 'update' (a missing one is
    not found) or 'upsert' (the CLI's `users add`). organisation: a name ('' clears it). Returns (contact,
    created)."""
    email = check_email(email, "email")
    if role is not None and role not in ROLES:
        raise Invalid(f"role: one of {', '.join(ROLES)}", field="role")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise Invalid("name: at most 200 characters", field="name")
    with transaction(app.sessions) as s:
        d = directory(s, app.clock)
        org = None
        if organisation:
            org = d.organisation(organisation)
            if org is None:
                raise Invalid(f"organisation: no organisation {organisation!r} (add it first)", field="organisation")
        c = d.contact(email)
        if c is not None and mode == "create":
            raise Conflict(f"contact {email} exists")
        if c is None and mode == "update":
            raise NotFound(f"no contact {email}")
        created = c is None
        if c is None:
            c = d.register(email, name=name or "", staff=role == "staff", organisation=org)
        if c.vouched is None:  # an admin (CLI or API) added it: the gateway may mail it (gateway.guard.relay)
            from gateway.guard.relay import ADMIN

            c.vouched = ADMIN
        if not created:
            if name is not None:
                c.name = name
            if role is not None and role != c.role:
                c.role = role
                d.staff_changed()
            if organisation is not None:
                c.organisation_id = org.id if org else None
                c.organisation = org
        s.flush()
        return user_view(c), created


def remove_user(app: App, email: str) -> None:
    """Remove a contact that no ticket or comment refers to (else 409: tickets keep their people); the
    tickets it watches lose it as a watcher."""
    email = check_email(email, "email")
    with transaction(app.sessions) as s:
        d = directory(s, app.clock)
        c = d.contact(email)
        if c is None:
            raise NotFound(f"no contact {email}")
        used = s.scalar(select(exists().where(or_(Ticket.reporter_id == c.id, Ticket.assignee_id == c.id)))) \
            or s.scalar(select(exists().where(Comment.author_id == c.id)))
        if used:
            raise Conflict(f"contact {email} is the reporter, assignee or author on tickets: it stays")
        s.execute(delete(Watcher).where(Watcher.contact_id == c.id))
        s.delete(c)
        d.contact_removed()


def block_user(app: App, email: str, *, blocked: bool = True, reason: str | None = None,
               create: bool = True) -> dict[str, Any]:
    """Block a contact (every mail from it is quarantined with the reason; an unknown address is added as a
    blocked correspondent unless create is False) or unblock it."""
    email = check_email(email, "email")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise Invalid(f"reason: at most {MAX_REASON} characters", field="reason")
    with transaction(app.sessions) as s:
        d = directory(s, app.clock)
        c = d.contact(email)
        if c is None:
            if not blocked or not create:
                raise NotFound(f"no contact {email}")
            c = d.register(email, correspondent=True)
        c.blocked = blocked
        c.blocked_reason = ((reason or "").strip() or "blocked by an admin") if blocked else None
        s.flush()
        return user_view(c)


def _domains(values: Any) -> list[str]:
    if not isinstance(values, list) or len(values) > MAX_DOMAINS:
        raise Invalid(f"domains: a list of at most {MAX_DOMAINS} mail domains", field="domains")
    out = []
    for v in values:
        d = str(v).strip().lower().lstrip("@")
        if not _DOMAIN.match(d):
            raise Invalid(f"domains: not a mail domain: {v!r}", field="domains")
        if d not in out:
            out.append(d)
    return out


def list_orgs(app: App, *, limit: int = pages.DEFAULT_LIMIT, cursor: str | None = None) -> Page:
    after = pages.str_key(pages.decode(cursor), "n") if cursor else None
    with app.sessions() as s:
        q = select(Organisation).order_by(Organisation.name)
        if after is not None:
            q = q.where(Organisation.name > after)
        rows = list(s.scalars(q.limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([org_view(o) for o in rows], pages.encode({"n": rows[-1].name}) if more and rows else None)


def get_org(app: App, name: str) -> dict[str, Any]:
    with app.sessions() as s:
        o = directory(s, app.clock).organisation(name)
        if o is None:
            raise NotFound(f"no organisation {name!r}")
        return org_view(o)


def save_org(app: App, name: str, *, domains: list[str] | None = None, replace_domains: bool = False,
             mode: str = "upsert", visibility: str | None = None) -> tuple[dict[str, Any], bool]:
    """Add an organisation or its domains. replace_domains: the list given becomes its domains (the API's
    PATCH, `orgs set --domain`); else the domains are added (the CLI's `orgs add`). A domain of another
    organisation is a conflict. visibility: reporter-only (the default of a new one) or organisation. Returns
    (organisation, created)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise Invalid("name: 1-200 characters", field="name")
    if visibility is not None and visibility not in VISIBILITIES:
        raise Invalid(f"visibility: one of {', '.join(VISIBILITIES)}", field="visibility")
    wanted = _domains(domains or [])
    with transaction(app.sessions) as s:
        d = directory(s, app.clock)
        org = d.organisation(name)
        if org is not None and mode == "create":
            raise Conflict(f"organisation {name!r} exists")
        if org is None and mode == "update":
            raise NotFound(f"no organisation {name!r}")
        for dom in wanted:
            other = d.organisation_for_domain(dom)
            if other is not None and other.name != name:
                raise Conflict(f"domain {dom} already belongs to {other.name}")
        created = org is None
        org = d.add_organisation(name, wanted)
        if visibility is not None and visibility != org.visibility:
            org.visibility = visibility
            s.flush()
        if replace_domains:
            gone = [x for x in org.domains if x.domain not in wanted]
            for x in gone:
                s.delete(x)
            if gone:
                s.flush()
                s.refresh(org)
                d.organisations_changed()
        return org_view(org), created


def remove_org(app: App, name: str) -> None:
    """Remove an organisation no contact or ticket belongs to (else 409)."""
    with transaction(app.sessions) as s:
        d = directory(s, app.clock)
        org = d.organisation(name)
        if org is None:
            raise NotFound(f"no organisation {name!r}")
        used = s.scalar(select(exists().where(Contact.organisation_id == org.id))) \
            or s.scalar(select(exists().where(Ticket.organisation_id == org.id)))
        if used:
            raise Conflict(f"organisation {name!r} still has contacts or tickets: it stays")
        s.execute(delete(OrganisationDomain).where(OrganisationDomain.organisation_id == org.id))
        s.delete(org)
        d.organisations_changed()
