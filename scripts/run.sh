#!/usr/bin/env bash
# Runs the gateway with its embedded defaults on a fresh Debian machine (as root): SQLite under ./var,
# SMTP on 127.0.0.1:2525 and LMTP on 127.0.0.1:2424, outgoing mail into the Maildir ./var/outbox-maildir.
# Any arguments go to `ticket-gateway serve` (e.g. --config FILE is given before: use TICKET_GATEWAY_CONFIG).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
venv=${TG_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e .
exec "$venv/bin/ticket-gateway" serve "$@"
