#!/usr/bin/env bash
# Installs ticket-gateway as a system service on Debian (as root). Idempotent: a second run changes nothing
# and never touches an existing /etc/ticket-gateway/config.toml.
#
#   bash scripts/install.sh [--address support@example.com ...] [--root DIR] [--python PATH] [--no-start]
#
#   - the system user and group `ticket-gateway` (no login, home /var/lib/ticket-gateway)
#   - /etc/ticket-gateway/config.toml from systemd/config.toml (LMTP on 127.0.0.1:2424, no IMAP, mail out
#     through the local MTA), only when it does not exist yet; mode 0640, group ticket-gateway
#   - /var/lib/ticket-gateway (the data directory, mode 0750, owned by the user)
#   - the code in a virtualenv, /opt/ticket-gateway/.venv (reinstalled only when the source changed)
#   - /etc/systemd/system/ticket-gateway.service, enabled; started (restarted after a change) where systemd runs
#   - /usr/share/doc/ticket-gateway/ (README.md, architecture.md, config.example.toml: the unit's Documentation=)
#
# --root DIR installs into a staging root instead of / (packagers, tests): every path above is under DIR, the
# user is added to DIR/etc/passwd when that file exists (useradd --prefix), nothing is started. The
# virtualenv's scripts then name DIR/opt/... in their first line.
set -euo pipefail
umask 022

ROOT=""
PYTHON=""
START=1
ADDRESSES=()
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --root=*) ROOT=${1#--root=}; shift ;;
    --python) PYTHON=${2:?--python needs a path}; shift 2 ;;
    --address) ADDRESSES+=("${2:?--address needs an address}"); shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
done
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" = / ] && ROOT=""
fi
SRC=$(cd "$(dirname "$0")/.." && pwd)
NAME=ticket-gateway
ETC=$ROOT/etc/$NAME
DATA=$ROOT/var/lib/$NAME
OPT=$ROOT/opt/$NAME
VENV=$OPT/.venv
UNIT=$ROOT/etc/systemd/system/$NAME.service
DOC=$ROOT/usr/share/doc/$NAME
CHANGED=()
note_change() { CHANGED+=("$1"); echo "install.sh: $1"; }

if [ "$(id -u)" != 0 ] && [ -z "$ROOT" ]; then
  echo "install.sh: run it as root (or give --root DIR)" >&2
  exit 77
fi

# The interpreter: Debian's python3 (the service cannot read an interpreter under /root: ProtectHome=yes)
if [ -z "$PYTHON" ]; then
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=$(command -v python3); fi
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install.sh: $PYTHON is older than Python 3.11" >&2
  exit 69
fi
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$PYTHON" = /usr/bin/python3 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    note_change "installed the Debian package python3-venv"
  else
    echo "install.sh: $PYTHON has no venv/ensurepip module" >&2
    exit 69
  fi
fi

# 1. The system user ----------------------------------------------------------------------------------------
passwd_file=$ROOT/etc/passwd
if [ -z "$ROOT" ] || [ -f "$passwd_file" ]; then
  if ! grep -q "^$NAME:" "$passwd_file" 2>/dev/null; then
    prefix=()
    [ -n "$ROOT" ] && prefix=(--prefix "$ROOT")
    useradd "${prefix[@]}" --system --user-group --home-dir "/var/lib/$NAME" --no-create-home \
      --shell /usr/sbin/nologin --comment "ticket-gateway service" "$NAME"
    note_change "added the system user $NAME"
  fi
  OWNER=$(awk -F: -v n="$NAME" '$1 == n { print $3 }' "$passwd_file")
  GROUP=$(awk -F: -v n="$NAME" '$1 == n { print $4 }' "$passwd_file")
else
  echo "install.sh: no $passwd_file: the user $NAME is not added (create it when the staged tree is installed)"
  OWNER=$(id -u)
  GROUP=$(id -g)
fi

# Helpers: create or correct a directory or a file; each says what it changed and nothing otherwise
ensure_dir() {  # PATH MODE UID GID
  local path=$1 mode=$2 uid=$3 gid=$4
  if [ ! -d "$path" ]; then
    install -d -m "$mode" -o "$uid" -g "$gid" "$path"
    note_change "created $path"
  elif [ "$(stat -c '%a %u %g' "$path")" != "${mode#0} $uid $gid" ]; then
    chmod "$mode" "$path"
    chown "$uid:$gid" "$path"
    note_change "corrected the owner or mode of $path"
  fi
}
ensure_file() {  # SOURCE DEST MODE UID GID
  local src=$1 dest=$2 mode=$3 uid=$4 gid=$5
  if ! cmp -s "$src" "$dest"; then
    install -D -m "$mode" -o "$uid" -g "$gid" "$src" "$dest"
    note_change "installed $dest"
  elif [ "$(stat -c '%a %u %g' "$dest")" != "${mode#0} $uid $gid" ]; then
    chmod "$mode" "$dest"
    chown "$uid:$gid" "$dest"
    note_change "corrected the owner or mode of $dest"
  fi
}

# 2. The configuration (written once) and the data directory ------------------------------------------------
ensure_dir "$ETC" 0750 0 "$GROUP"
if [ ! -e "$ETC/config.toml" ]; then
  if [ ${#ADDRESSES[@]} -eq 0 ]; then
    ADDRESSES=("support@$(hostname -f 2>/dev/null || hostname)")
  fi
  list=$(printf '"%s", ' "${ADDRESSES[@]}")
  tmp_config=$(mktemp)
  sed "s|^addresses = .*|addresses = [${list%, }]|" "$SRC/systemd/config.toml" > "$tmp_config"
  install -m 0640 -o 0 -g "$GROUP" "$tmp_config" "$ETC/config.toml"
  rm -f "$tmp_config"
  note_change "wrote $ETC/config.toml (addresses: ${ADDRESSES[*]}; edit it for your domain)"
fi
ensure_dir "$DATA" 0750 "$OWNER" "$GROUP"

# 3. The code in a virtualenv (built from a copy of the source: the source tree stays as it is) -------------
source_files() {
  (cd "$SRC" && find pyproject.toml README.md config.example.toml gateway handlers templates -type f \
     ! -name '*.pyc' ! -path '*/__pycache__/*' | LC_ALL=C sort)
}
stamp="python $("$PYTHON" -c 'import sys; print(sys.version)' | head -n1); source $(
  cd "$SRC" && source_files | tr '\n' '\0' | xargs -0 sha256sum | sha256sum | cut -c1-64)"
CODE_CHANGED=0
if [ ! -x "$VENV/bin/$NAME" ] || [ "$(cat "$OPT/installed" 2>/dev/null)" != "$stamp" ]; then
  ensure_dir "$OPT" 0755 0 0
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  (cd "$SRC" && source_files | tar -cf - -T -) | tar -xf - -C "$build"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$build"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$build"
  printf '%s\n' "$stamp" > "$OPT/installed"
  CODE_CHANGED=1
  note_change "installed the code in $VENV"
fi

# 4. Documentation (the unit's Documentation=) and the unit ------------------------------------------------
ensure_file "$SRC/README.md" "$DOC/README.md" 0644 0 0
ensure_file "$SRC/docs/architecture.md" "$DOC/architecture.md" 0644 0 0
ensure_file "$SRC/config.example.toml" "$DOC/config.example.toml" 0644 0 0
before=${#CHANGED[@]}
ensure_file "$SRC/systemd/$NAME.service" "$UNIT" 0644 0 0
UNIT_CHANGED=$(( ${#CHANGED[@]} - before ))

# 5. Enabled; started where systemd runs -------------------------------------------------------------------
wants=$ROOT/etc/systemd/system/multi-user.target.wants/$NAME.service
if [ ! -L "$wants" ]; then
  mkdir -p "$(dirname "$wants")"
  ln -s "/etc/systemd/system/$NAME.service" "$wants"
  note_change "enabled $NAME.service"
fi
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  if [ "$UNIT_CHANGED" -gt 0 ]; then systemctl daemon-reload; fi
  if [ "$START" = 1 ]; then
    if ! systemctl is-active --quiet "$NAME"; then
      systemctl start "$NAME"
      note_change "started $NAME.service"
    elif [ "$CODE_CHANGED" = 1 ] || [ "$UNIT_CHANGED" -gt 0 ]; then
      systemctl restart "$NAME"
      note_change "restarted $NAME.service"
    fi
  fi
elif [ -z "$ROOT" ] && [ "$START" = 1 ] && [ ${#CHANGED[@]} -gt 0 ]; then
  echo "install.sh: systemd is not running here: start the service with your init system" \
       "(as $NAME: TICKET_GATEWAY_CONFIG=/etc/$NAME/config.toml /opt/$NAME/.venv/bin/$NAME serve)"
fi

if [ ${#CHANGED[@]} -eq 0 ]; then
  echo "install.sh: nothing changed"
else
  echo "install.sh: ${#CHANGED[@]} change(s); check the configuration with:" \
       "$VENV/bin/$NAME --config $ETC/config.toml check-config"
fi
