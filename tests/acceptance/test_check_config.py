"""`ticket-gateway check-config`: every error at once, the files the config names, routes, lower-case log
levels, keys named as written, and a summary of what will run. It writes nothing."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(f'[gateway]\ndata_dir = "{tmp_path / "var"}"\naddresses = ["support@example.com", '
                 f'"billing@example.com"]\n' + text)
    return p


def errors_of(p) -> list[str]:
    return [line for line in p.stderr.decode().splitlines() if "configuration error" in line]


def test_every_schema_error_at_once(tmp_path) -> None:
    cfg = write(tmp_path, '''reopen_days = "soon"
colour = "blue"
[limits]
max_message_size = 0
[[routes]]
address = "sales@example.com"
[sla]
policies = [{ name = "p1", response = 0, resolution = 60 },
            { name = "p2", response = 30, resolution = 60, warn_at = 150 }]
[logging]
level = "loud"
''')
    p = run_cli("check-config", config=cfg)
    assert p.returncode == 78
    errors = errors_of(p)
    named = [e.split("configuration error: ", 1)[1].split(":", 1)[0] for e in errors]
    assert sorted(named) == sorted(["gateway.colour", "gateway.reopen_days", "limits.max_message_size",
                                    "routes[0].address", "sla.policies", "logging.level"]), errors
    sla = next(e for e in errors if "sla.policies" in e)
    # the keys as written in the config, not the internal field names
    assert "'p1' response:" in sla and "'p2' warn_at:" in sla and "_minutes" not in sla and "percent" not in sla
    route = next(e for e in errors if "routes[0]" in e)
    assert "not one of gateway.addresses" in route


def test_files_are_checked_all_at_once(tmp_path) -> None:
    (tmp_path / "empty-password").write_text("\n")
    cfg = write(tmp_path, f'''[[listen]]
protocol = "smtp"
port = 0
tls_cert = "{tmp_path / 'missing.crt'}"
tls_key = "{tmp_path / 'missing.key'}"
[[imap]]
name = "support"
host = "imap.example.com"
user = "support@example.com"
password_file = "imap-password"
[[imap]]
name = "billing"
host = "imap.example.com"
user = "billing@example.com"
password_file = "empty-password"
[outbound]
relay_host = "smtp.example.com"
relay_user = "gw"
relay_password_file = "/nonexistent/relay-password"
[notifications]
template_dir = "no-such-templates"
''')
    p = run_cli("check-config", config=cfg)
    assert p.returncode == 78, p.stdout
    text = "\n".join(errors_of(p))
    for where in ("listen[0].tls_cert", "listen[0].tls_key", "imap[0].password_file", "imap[1].password_file",
                  "outbound.relay_password_file", "notifications.template_dir"):
        assert where in text, (where, text)
    assert str(tmp_path / "imap-password") in text  # relative to the config file
    assert "is empty" in text
    assert not (tmp_path / "var").exists()  # checking writes nothing


def test_summary_of_what_will_run(tmp_path) -> None:
    (tmp_path / "imap-password").write_text("secret\n")
    cfg = write(tmp_path, '''[[listen]]
protocol = "lmtp"
host = "127.0.0.1"
port = 2424
[[listen]]
protocol = "lmtp"
path = "/run/ticket-gateway/lmtp.sock"
socket_mode = "0666"
[[imap]]
name = "support"
host = "imap.example.com"
user = "support@example.com"
password_file = "imap-password"
address = "support@example.com"
[[routes]]
address = "billing@example.com"
group = "billing"
priority = "high"
[outbound]
relay_host = "127.0.0.1"
relay_port = 25
relay_security = "none"
[logging]
level = "debug"
''')
    p = run_cli("check-config", config=cfg)
    assert p.returncode == 0, p.stderr
    lines = dict(line.split(": ", 1) for line in p.stdout.decode().splitlines()[1:])
    assert p.stdout.decode().splitlines()[0] == f"config: {cfg}: OK"
    assert lines["listeners"] == "lmtp 127.0.0.1:2424; lmtp unix:/run/ticket-gateway/lmtp.sock (mode 0666)"
    assert lines["imap accounts"] == ("support: support@example.com@imap.example.com:993 (tls), INBOX -> Processed, "
                                      "lease 30 s")
    assert lines["routes"] == "billing@example.com -> group billing, high, incident"
    assert lines["outgoing mail"] == "relay 127.0.0.1:25 (plain, no TLS), from Support <support@example.com>"
    assert lines["database"] == f"sqlite:///{tmp_path / 'var' / 'gateway.db'}"
    assert lines["data dir"].startswith(str(tmp_path / "var")) and "does not exist yet" in lines["data dir"]
    assert lines["unknown senders"] == "correspondent"
    assert lines["log"] == "DEBUG to standard error"  # lower case accepted
    assert not (tmp_path / "var").exists()
    # the defaults: the built-in listeners, the outbox Maildir
    bare = write(tmp_path, "")
    p = run_cli("check-config", config=bare)
    lines = dict(line.split(": ", 1) for line in p.stdout.decode().splitlines()[1:])
    assert lines["listeners"] == "smtp 127.0.0.1:2525; lmtp 127.0.0.1:2424 (built-in defaults)"
    assert lines["outgoing mail"].startswith("no relay: written to the Maildir")
    assert lines["imap accounts"] == "none" and lines["routes"] == "none"
