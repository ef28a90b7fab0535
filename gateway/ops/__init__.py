"""Operations shared by the CLI and the HTTP API: each takes the App and plain values, runs its own
transaction, applies the rules (the same ones mail and the CLI follow, through gateway.tickets and its
listeners) and returns plain data. The CLI prints what they return; the API serialises it. Neither holds
logic of its own beyond parsing its input.

Errors are `gateway.ops.errors.OpError`s (NotFound, Invalid, Conflict): the CLI prints them (exit 64), the API
answers them as RFC 9457 problems (404, 422, 409).

Modules: tickets (list/get/create/change, comments, attachments), directory (users, organisations), mail
(inbound mail, trace, replay), outbox (list, retry), sla (policies), tokens (API tokens). Extension point:
ticket links, time entries, watchers and merge belong to gateway.ops.tickets once the ticket model has them
(see `EXTENSIONS` in gateway/api/routes.py).
"""
