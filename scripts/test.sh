#!/usr/bin/env bash
# Runs the checks and the whole test suite on a fresh Debian machine (as root), installing what it needs first:
# Debian packages (python3-venv, dovecot-imapd, postfix, postgresql) when missing, a virtualenv with the
# project and its test and dev extras, and a running PostgreSQL on 127.0.0.1:5432 (trust auth for local
# tests). Postfix is installed with debconf's "No configuration": the tests start private instances of it
# (tests/postfix.py); the machine's own mail system is neither configured nor started.
# The checks (ruff, mypy, import-linter, scripts/check_cycles.py, scripts/check_docs_names.py) run first; any
# failure fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v python3 >/dev/null || need_pkgs+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
[ -x /usr/sbin/dovecot ] || need_pkgs+=(dovecot-imapd)
if [ ! -x /usr/sbin/postfix ]; then
  need_pkgs+=(postfix)
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
fi
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_pkgs+=(postgresql)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# PostgreSQL on 127.0.0.1:5432 with trust auth for the test user (the machine's own, or the one installed above)
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
  if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
    pg_createcluster "$ver" main >/dev/null
  fi
  conf=$(ls /etc/postgresql/*/main/pg_hba.conf | head -n1)
  grep -q "ticket-gateway tests" "$conf" || sed -i '1i # ticket-gateway tests\nhost all all 127.0.0.1/32 trust\nlocal all all trust' "$conf"
  pg_ctlcluster --skip-systemctl-redirect "$(basename "$(dirname "$(dirname "$conf")")")" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

venv=${TG_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -e ".[test,dev]"

# Checked habits, before the tests (configured in pyproject.toml; the first failure stops the run):
# lint and complexity, types, the import layers, no import cycle at run time.
echo "checks: ruff, mypy, import contracts, import cycles, names in docs/architecture.md"
"$venv/bin/ruff" check --quiet .
"$venv/bin/mypy"
"$venv/bin/lint-imports" --no-cache
"$venv/bin/python" scripts/check_cycles.py
"$venv/bin/python" scripts/check_docs_names.py  # the code names docs/architecture.md uses exist

# Two test processes (pytest-xdist, work stealing: a process that is done takes tests the other has not begun;
# TG_TEST_WORKERS=0 runs in one; three were measured no faster on 2 cores:
# 846 s against 861 s of pytest); the 30 slowest tests are listed at the end (the suite must stay under 15 minutes): each has its own PostgreSQL template, SQLite template, Dovecot and temporary directories, and every listener takes a free port.
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=30 -n "${TG_TEST_WORKERS:-2}" --dist worksteal "$@"
