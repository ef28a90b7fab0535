"""scripts/install.sh into a staging root (--root): what it installs, that a second run changes nothing and keeps
the config, that the installed command accepts the installed config, and that the systemd unit agrees with it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh sets owners: needs root")

INSTALL = ROOT / "scripts" / "install.sh"
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else shutil.which("python3")


def run_install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TICKET_GATEWAY_CONFIG"}
    return subprocess.run(["bash", str(INSTALL), "--root", str(root), "--python", str(PYTHON), *args],
                          capture_output=True, text=True, env=env, timeout=600)


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under root: type, mode, owner, group, mtime and the content's hash (files) or target (links)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                extra: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                extra = None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                                             st.st_gid, st.st_mtime_ns, extra)
    return out


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("staged")
    (root / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):  # a staged system's user database
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    first = run_install(root, "--address", "support@example.com", "--address", "billing@example.com")
    assert first.returncode == 0, first.stdout + first.stderr
    return root, first


def ids(root: Path) -> tuple[int, int]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == "ticket-gateway":
            return int(f[2]), int(f[3])
    raise AssertionError("no ticket-gateway user in the staged /etc/passwd")


def test_install_lays_out_user_config_data_code_unit(staged) -> None:
    root, first = staged
    uid, gid = ids(root)
    assert Path("/etc/passwd").read_text().count("\nticket-gateway:") == 0, "the host's users were changed"
    line = next(x for x in (root / "etc" / "passwd").read_text().splitlines() if x.startswith("ticket-gateway:"))
    assert line.endswith(":/var/lib/ticket-gateway:/usr/sbin/nologin")
    config = root / "etc" / "ticket-gateway" / "config.toml"
    st = config.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, gid)
    text = config.read_text()
    assert 'addresses = ["support@example.com", "billing@example.com"]' in text
    assert "[[imap]]" not in text and 'protocol = "lmtp"' in text and 'host = "127.0.0.1"' in text
    data = (root / "var" / "lib" / "ticket-gateway").stat()
    assert (stat.S_IMODE(data.st_mode), data.st_uid, data.st_gid) == (0o750, uid, gid)
    assert os.access(root / "opt" / "ticket-gateway" / ".venv" / "bin" / "ticket-gateway", os.X_OK)
    unit = root / "etc" / "systemd" / "system" / "ticket-gateway.service"
    assert unit.read_text() == (ROOT / "systemd" / "ticket-gateway.service").read_text()
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "ticket-gateway.service"
    assert os.readlink(wants) == "/etc/systemd/system/ticket-gateway.service"
    # the unit's Documentation= is installed
    docs = re.findall(r"^Documentation=(.*)$", unit.read_text(), re.M)
    assert docs
    for url in docs[0].split():
        assert url.startswith("file://") and (root / url[len("file:///"):]).is_file(), url
    assert "nothing changed" not in first.stdout


def test_second_run_changes_nothing_and_keeps_the_config(staged) -> None:
    root, _ = staged
    config = root / "etc" / "ticket-gateway" / "config.toml"
    edited = config.read_text().replace('host = "127.0.0.1"', 'host = "127.0.0.1"  # edited by the admin')
    config.write_text(edited)
    before = snapshot(root)
    again = run_install(root, "--address", "other@example.com")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1] == "install.sh: nothing changed", again.stdout
    assert snapshot(root) == before
    assert config.read_text() == edited


def test_a_wrong_owner_is_corrected(staged) -> None:
    root, _ = staged
    data = root / "var" / "lib" / "ticket-gateway"
    uid, gid = ids(root)
    os.chown(data, 0, 0)
    fixed = run_install(root)
    assert fixed.returncode == 0 and "corrected the owner or mode" in fixed.stdout, fixed.stdout + fixed.stderr
    assert (data.stat().st_uid, data.stat().st_gid) == (uid, gid)
    assert run_install(root).stdout.strip().endswith("nothing changed")


def test_installed_command_accepts_the_installed_config(staged) -> None:
    root, _ = staged
    exe = root / "opt" / "ticket-gateway" / ".venv" / "bin" / "ticket-gateway"
    env = {k: v for k, v in os.environ.items() if k != "TICKET_GATEWAY_CONFIG"}
    r = subprocess.run([str(exe), "--config", str(root / "etc/ticket-gateway/config.toml"), "check-config"],
                       capture_output=True, text=True, env=env, timeout=120, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout
    assert "lmtp 127.0.0.1:2424" in r.stdout  # the summary names what will run
    assert "imap" not in r.stdout.lower().replace("imap accounts: none", "")


def test_unit_verifies_and_makes_the_configured_paths_writable(staged) -> None:
    root, _ = staged
    unit = (root / "etc/systemd/system/ticket-gateway.service").read_text()
    settings: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            settings.setdefault(k, []).append(v)
    assert settings["ProtectSystem"] == ["strict"]
    writable = ["/var/lib/" + d for d in settings.get("StateDirectory", [])] \
        + ["/run/" + d for d in settings.get("RuntimeDirectory", [])] \
        + ["/var/log/" + d for d in settings.get("LogsDirectory", [])] \
        + [p for v in settings.get("ReadWritePaths", []) for p in v.split()]
    config = (root / "etc/ticket-gateway/config.toml").read_text()
    data_dir = re.search(r'^data_dir = "(.*)"$', config, re.M).group(1)
    assert any(data_dir == w or data_dir.startswith(w + "/") for w in writable), (data_dir, writable)
    # the README's LMTP Unix socket lies in a directory the unit makes writable (and others can reach)
    readme = (ROOT / "README.md").read_text()
    sockets = re.findall(r'^\s*path = "(/[^"]+)"', readme, re.M)
    assert sockets, "the README shows an LMTP Unix socket path"
    for sock in sockets:
        assert any(sock.startswith(w + "/") for w in writable), (sock, writable)
    assert settings.get("RuntimeDirectoryMode") == ["0755"]
    if shutil.which("systemd-analyze"):
        exe = root / "opt/ticket-gateway/.venv/bin/ticket-gateway"
        copy = root.parent / "ticket-gateway.service"
        copy.write_text(unit.replace("ExecStart=/opt/ticket-gateway/.venv/bin/ticket-gateway", f"ExecStart={exe}"))
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
