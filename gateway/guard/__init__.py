"""Guards against hostile senders (issue 12): pure policies with their inputs as arguments.

* `flood`: the inbound flood cap (tickets and comments per sender address per hour).
* `relay`: who a mail may make a watcher, and whom the gateway may mail.
* `connlimits`: per-client session limits and stress-dependent idle timeouts for the listeners.
* `diskspace`: the free-space probe that pauses intake while the data directory is nearly full.
Sender authentication is `gateway.auth`.
"""
