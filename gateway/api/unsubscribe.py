"""RFC 8058 one-click unsubscribe in the HTTP API (gateway.api.routes EXTENSIONS):
POST /api/v1/unsubscribe/{token} removes the watcher the signed token names (a mail client posts
`List-Unsubscribe=One-Click`); GET shows a page with a button that posts the same (RFC 8058: a GET, which
link scanners make, never unsubscribes).

No Bearer token: the token in the path is the authority (120-bit HMAC, gateway.ourmail), bound to one ticket
and one watcher. The request body is bounded by [http] max_body_bytes and not needed."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.responses import Response

    from gateway.api.app import Call
    from gateway.api.spec import Op

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Unsubscribe</title></head>
<body style="font-family: sans-serif;"><p>{text}</p>{form}</body></html>
"""


def _page(text: str, status: int, form: str = "") -> Response:
    from starlette.responses import HTMLResponse

    return HTMLResponse(_PAGE.format(text=html.escape(text), form=form), status_code=status,
                        headers={"Cache-Control": "no-store"})


async def confirm(call: Call) -> Response:
    from gateway.ops.unsubscribe import valid_token

    token = str(call.path["token"])
    if not valid_token(token):
        return _page("This unsubscribe link is not valid.", 404)
    form = (f'<form method="post" action="{html.escape(call.request.url.path)}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Stop notifications for this ticket</button></form>')
    return _page("Stop receiving notifications about this ticket?", 200, form)


async def one_click(call: Call) -> Response:
    from gateway.ops.unsubscribe import unsubscribe

    await call.request.body()  # `List-Unsubscribe=One-Click` (bounded by the API's body limit); not needed
    done = await call.run(unsubscribe, call.app, str(call.path["token"]), write=True)
    if done is None:
        return _page("Nothing to do: this link names no current watcher (already unsubscribed?).", 404)
    return _page(f"{done.email} no longer receives notifications about ticket #{done.ticket}.", 200)


def operations() -> list[Op]:
    from gateway.api.spec import Op, Param, string

    page = "text/html"
    token = [Param("token", string(max_length=40), "path")]
    return [
        Op("POST", "/unsubscribe/{token}", "unsubscribeOneClick",
           "RFC 8058 one-click unsubscribe: the watcher the signed token names leaves the ticket", "unsubscribe",
           None, one_click, token,
           responses={200: ("Unsubscribed", None, page), 404: ("The token names no current watcher", None, page)},
           description="The URL of a notification's List-Unsubscribe header (with List-Unsubscribe-Post: "
                       "List-Unsubscribe=One-Click). No Bearer token: the signed token is the authority."),
        Op("GET", "/unsubscribe/{token}", "unsubscribePage",
           "A page with a button that unsubscribes (a GET itself changes nothing)", "unsubscribe",
           None, confirm, token,
           responses={200: ("The page", None, page), 404: ("Not an unsubscribe token", None, page)}),
    ]


__all__ = ["confirm", "one_click", "operations"]
