"""Config: the schema is the single source; bad keys and values stop start-up naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config import SCHEMA, ConfigError, example_toml, load, validate

ROOT = Path(__file__).resolve().parents[2]


def test_defaults():
    c = validate({})
    assert c.gateway["unknown_senders"] == "correspondent"
    assert c.database_url.endswith("var/gateway.db") and c.database_url.startswith("sqlite:///")
    assert c.attachments_dir == c.data_dir / "attachments"


def test_example_file_is_generated_from_the_schema_and_loads():
    text = (ROOT / "config.example.toml").read_text()
    assert text == example_toml(), "regenerate: python -m gateway check-config --example > config.example.toml"
    data = tomllib.loads(text)
    validate(data)
    for section, spec in SCHEMA.items():
        if not spec.many:
            assert set(data[section]) == set(spec.keys), section


@pytest.mark.parametrize("data,named", [
    ({"gateway": {"adresses": []}}, "gateway.adresses"),
    ({"gatway": {}}, "gatway"),
    ({"gateway": {"unknown_senders": "sometimes"}}, "gateway.unknown_senders"),
    ({"gateway": {"addresses": ["not-an-address"]}}, "gateway.addresses"),
    ({"gateway": {"reopen_days": "14"}}, "gateway.reopen_days"),
    ({"gateway": {"reopen_days": True}}, "gateway.reopen_days"),
    ({"limits": {"max_message_size": 0}}, "limits.max_message_size"),
    ({"gateway": {"subject_tag_prefix": "[x]"}}, "gateway.subject_tag_prefix"),
])
def test_bad_values_name_the_key(data, named):
    with pytest.raises(ConfigError) as e:
        validate(data)
    assert str(e.value).startswith(named)


def test_load_order(tmp_path, monkeypatch):
    p = tmp_path / "c.toml"
    p.write_text('[gateway]\ndata_dir = "data"\n')
    monkeypatch.setenv("TICKET_GATEWAY_CONFIG", str(p))
    c = load()
    assert c.data_dir == tmp_path / "data"  # relative to the config file
    monkeypatch.delenv("TICKET_GATEWAY_CONFIG")
    assert load().source == "built-in defaults"
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.toml")
    p.write_text("[gateway\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(p)


def test_gateway_address_and_subaddress():
    c = validate({"gateway": {"addresses": ["Support@Example.com"]}})
    assert c.is_gateway_address("support@example.com")
    assert c.is_gateway_address("support+abc123@example.com")
    assert not c.is_gateway_address("supporter@example.com")
    assert not c.is_gateway_address(None)
