"""The [backend] section as a typed value, checked as a whole (a key that only makes sense with others)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import Config, ConfigError

DEFAULT_REFERENCE = {"jira": "labels", "zammad": "tags", "smax": "ExternalProcessReference"}


@dataclass(frozen=True)
class Settings:
    kind: str
    name: str
    url: str
    user: str
    token_file: Path | None
    service_desk_id: str
    tenant_id: str
    reference_field: str
    poll_seconds: int
    deliver_seconds: int
    timeout: float
    batch_size: int
    retry_base: int
    retry_max: int
    lease_seconds: int
    max_attachment_bytes: int
    notifications: str
    webhook_secret_file: Path | None
    request_types: dict[str, str] = field(default_factory=dict)
    priorities: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)

    def secret(self) -> str:
        """The desk credential (first line of token_file), read when needed; never logged."""
        return _first_line(self.token_file, "backend.token_file")

    def webhook_secret(self) -> bytes | None:
        if self.webhook_secret_file is None:
            return None
        return _first_line(self.webhook_secret_file, "backend.webhook_secret_file").encode()

    def request_type(self, local_type: str) -> str | None:
        return self.request_types.get(local_type) or self.request_types.get("*")

    def remote_status_for(self, local: str) -> str | None:
        """The first remote status mapped to this local status (what a local change is pushed as)."""
        for remote, mapped in self.statuses.items():
            if mapped == local:
                return remote
        return None


def _first_line(path: Path | None, key: str) -> str:
    if path is None:
        raise ConfigError(f"{key}: not set")
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror or e}") from None
    value = lines[0].strip() if lines else ""
    if not value:
        raise ConfigError(f"{key}: {path} is empty")
    return value


def _path(config: Config, value: str) -> Path | None:
    if not value:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else config.base_dir / p


def load(config: Config) -> Settings | None:
    """None for the builtin store; else the settings, or ConfigError naming what is missing."""
    b: dict[str, Any] = config.values["backend"]
    kind = b["kind"]
    if kind == "builtin":
        return None
    if not b["url"]:
        raise ConfigError(f"backend.url: required for kind = {kind!r}")
    if not b["token_file"]:
        raise ConfigError(f"backend.token_file: required for kind = {kind!r}")
    if kind == "jira" and not b["service_desk_id"]:
        raise ConfigError("backend.service_desk_id: required for kind = 'jira'")
    if kind == "smax" and not (b["tenant_id"] and b["user"]):
        raise ConfigError("backend.tenant_id and backend.user: required for kind = 'smax'")
    ref = b["reference_field"] or DEFAULT_REFERENCE[kind]
    if kind == "jira" and ref not in ("labels", "description"):
        raise ConfigError("backend.reference_field: for jira one of 'labels', 'description'")
    if kind == "zammad" and ref != "tags":
        raise ConfigError("backend.reference_field: for zammad only 'tags'")
    return Settings(
        kind=kind, name=b["name"] or kind, url=b["url"].rstrip("/"), user=b["user"],
        token_file=_path(config, b["token_file"]), service_desk_id=str(b["service_desk_id"]),
        tenant_id=str(b["tenant_id"]), reference_field=ref, poll_seconds=b["poll_seconds"],
        deliver_seconds=b["deliver_seconds"], timeout=float(b["timeout_seconds"]), batch_size=b["batch_size"],
        retry_base=b["retry_base_seconds"], retry_max=b["retry_max_seconds"], lease_seconds=b["lease_seconds"],
        max_attachment_bytes=b["max_attachment_bytes"], notifications=b["notifications"],
        webhook_secret_file=_path(config, b["webhook_secret_file"]),
        request_types={k: str(v) for k, v in b["request_types"].items()},
        priorities={k: str(v) for k, v in b["priorities"].items()},
        statuses=dict(b["statuses"]))
