"""Pure parts of the broker: the [backend] section, Retry-After, webhook signatures, relative poll windows."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.backends.desk import minutes_since, parse_time, retry_after
from gateway.backends.settings import load
from gateway.backends.webhook import signature_ok
from gateway.config import ConfigError, validate

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def cfg(tmp_path: Path, **backend):
    return validate({"backend": backend}, base_dir=tmp_path)


def test_builtin_is_the_default_and_installs_nothing(tmp_path):
    from gateway.app import build_app

    c = validate({"gateway": {"data_dir": str(tmp_path)}}, base_dir=tmp_path)
    assert c.values["backend"]["kind"] == "builtin" and load(c) is None
    app = build_app(c)
    try:
        assert not [li for li in app.listeners if type(li).__module__.startswith("gateway.backends")]
    finally:
        app.close()


@pytest.mark.parametrize("backend, message", [
    ({"kind": "jira"}, "backend.url"),
    ({"kind": "jira", "url": "https://x.example", "token_file": "t"}, "backend.service_desk_id"),
    ({"kind": "smax", "url": "https://x.example", "token_file": "t"}, "backend.tenant_id"),
    ({"kind": "zammad", "url": "https://x.example", "token_file": "t", "reference_field": "note"},
     "backend.reference_field"),
])
def test_missing_keys_name_themselves(tmp_path, backend, message):
    with pytest.raises(ConfigError, match=message):
        load(cfg(tmp_path, **backend))


@pytest.mark.parametrize("backend, message", [
    ({"kind": "servicenow"}, "backend.kind"),
    ({"statuses": {"Done": "finished"}}, "backend.statuses"),
    ({"request_types": {"bug": "10"}}, "backend.request_types"),
    ({"priorities": {"high": ""}}, "backend.priorities"),
    ({"url": "ftp://x"}, "backend.url"),
    ({"colour": "red"}, "backend.colour: unknown key"),
])
def test_bad_values_stop_start_up(tmp_path, backend, message):
    with pytest.raises(ConfigError, match=message):
        cfg(tmp_path, **backend)


def test_secret_read_from_file_when_needed(tmp_path):
    (tmp_path / "tok").write_text("abc123\nignored\n")
    s = load(cfg(tmp_path, kind="zammad", url="https://z.example/", token_file="tok",
                 statuses={"open": "open", "new": "open", "closed": "closed"}))
    assert s is not None and s.secret() == "abc123" and s.url == "https://z.example"
    assert "abc123" not in repr(s)  # the settings hold the path, never the secret
    assert s.remote_status_for("open") == "open" and s.remote_status_for("pending") is None
    (tmp_path / "tok").write_text("")
    with pytest.raises(ConfigError, match="token_file.*empty"):
        s.secret()


def test_retry_after() -> None:
    assert retry_after("120") == 120
    assert retry_after(None) == 60
    assert retry_after("soon") == 60
    assert retry_after("999999") == 3600  # a desk cannot park us for days
    assert retry_after("Mon, 02 Nov 2026 09:32:00 GMT", NOW) == 120
    assert retry_after("Mon, 02 Nov 2026 09:00:00 GMT", NOW) == 1


def test_signature() -> None:
    body = b'{"issue": {"key": "SD-1"}}'
    good = "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert signature_ok(b"k", body, good, "sha256")
    assert not signature_ok(b"k", body + b" ", good, "sha256")
    assert not signature_ok(b"other", body, good, "sha256")
    assert not signature_ok(b"k", body, good.replace("sha256", "sha1"), "sha256")
    assert not signature_ok(b"k", body, None, "sha256")
    assert not signature_ok(b"k", body, "", "sha256")
    sha1 = "sha1=" + hmac.new(b"k", body, hashlib.sha1).hexdigest()
    assert signature_ok(b"k", body, sha1, "sha1") and not signature_ok(b"k", body, sha1, "sha256")


def test_poll_window_and_times() -> None:
    assert minutes_since(None, NOW) == 24 * 60
    assert minutes_since(NOW - timedelta(minutes=10), NOW) == 12
    assert minutes_since(NOW, NOW) == 2
    assert parse_time("2026-11-02T09:30:00.000+0000") == NOW
    assert parse_time("2026-11-02T09:30:00.000Z") == NOW
    assert parse_time(int(NOW.timestamp() * 1000)) == NOW
    assert parse_time("garbage") is None and parse_time(None) is None
