"""The desks' webhook endpoint in the HTTP API (gateway.api.routes EXTENSIONS):
POST /api/v1/backends/{name}/webhook.

No Bearer token (a desk cannot send one): the desk's HMAC signature over the raw body is the authentication
(`gateway.backends.webhook.handle_webhook`, run in the API's threads as a write). The body is bounded by the
API's [http] max_body_bytes before it is read, and by the webhook's own limit after."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.responses import Response

    from gateway.api.app import Call
    from gateway.api.spec import Op


async def webhook(call: Call) -> Response:
    from gateway.api.app import json_response
    from gateway.backends.webhook import handle_webhook

    raw = await call.request.body()
    headers = {k: v for k, v in call.request.headers.items() if k.lower() == "x-hub-signature"}
    result = await call.run(handle_webhook, call.app, str(call.path["name"]), headers, raw, write=True)
    return json_response(result.body, result.status)


def operations() -> list[Op]:
    from gateway.api.spec import Op, Param, loose, string

    json = "application/json"
    answer = loose()
    return [Op("POST", "/backends/{name}/webhook", "backendWebhook",
               "A service desk's webhook: a doorbell (the request it names is re-read from the desk)", "backends",
               None, webhook, [Param("name", string(max_length=50), "path")],
               responses={202: ("Accepted: the named request will be re-read (or a poll made)", answer, json),
                          401: ("Bad or missing X-Hub-Signature: ignored", answer, json),
                          403: ("Webhooks are off (no backend.webhook_secret_file)", answer, json),
                          404: ("No such backend", answer, json),
                          413: ("Payload too large", answer, json)},
               description="Signed by the desk with X-Hub-Signature (sha256=<hex> from Jira and SMAX, sha1=<hex> "
                           "from Zammad) over the raw body, with the secret in backend.webhook_secret_file.")]


__all__ = ["operations", "webhook"]
