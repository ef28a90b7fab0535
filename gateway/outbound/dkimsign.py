"""DKIM signatures on outgoing mail (dkimpy), for relays that do not sign: `outbound.dkim_key_file`,
`outbound.dkim_selector`, `outbound.dkim_domain` (default: the From address's domain).

The signature is made when a mail's bytes are built (gateway.outbound.build) and stored with them, so a resend
after a crash is byte for byte the same mail. Relaxed/simple canonicalisation, rsa-sha256 (ed25519-sha256 for
an Ed25519 key, given as dkimpy reads it: the base64 seed). The headers signed are dkimpy's recommended set
present in the mail, and List-Unsubscribe with List-Unsubscribe-Post (RFC 8058 requires them signed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import Config

EXTRA = (b"list-unsubscribe", b"list-unsubscribe-post", b"auto-submitted")


class DkimError(Exception):
    """The key cannot be read or used."""


@dataclass(frozen=True)
class Signer:
    selector: bytes
    domain: bytes
    key: bytes
    algorithm: bytes

    def sign(self, raw: bytes) -> bytes:
        """The mail with a DKIM-Signature header on top."""
        import dkim

        _use_openssl(dkim)

        d = dkim.DKIM(raw, linesep=b"\r\n")
        present = {line.split(b":", 1)[0].strip().lower() for line in _header_names(raw)}
        headers = list(d.default_sign_headers())
        headers += [h for h in EXTRA if h in present and h not in headers]
        try:
            sig = d.sign(self.selector, self.domain, self.key, signature_algorithm=self.algorithm,
                         include_headers=headers)
        except dkim.DKIMException as e:
            raise DkimError(f"DKIM signing failed: {e}") from e
        return bytes(sig) + raw


def _use_openssl(dkim: Any) -> None:
    """dkimpy's RSA step (its pure-Python modular exponentiation: ~4 ms a signature on an idle core, 10 times
    the rest of a notification) done by OpenSSL through the `cryptography` package when it is installed. RSASSA-
    PKCS1-v1_5 is deterministic: the signature is byte for byte the one dkimpy makes. Without `cryptography`,
    dkimpy signs as it always did."""
    if getattr(dkim, "_gateway_openssl", False):
        return
    dkim._gateway_openssl = True
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
    except ImportError:
        return
    pure = dkim.RSASSA_PKCS1_v1_5_sign
    algorithms: dict[str, Any] = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
    keys: dict[tuple[int, int], Any] = {}  # (modulus, private exponent) -> OpenSSL key, made once per key

    def sign(digest: Any, pk: dict[str, int]) -> bytes:
        algorithm = algorithms.get(str(getattr(digest, "name", "")).lower())
        if algorithm is None:
            return bytes(pure(digest, pk))
        key = keys.get((pk["modulus"], pk["privateExponent"]))
        if key is None:
            public = rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"])
            key = keys[(pk["modulus"], pk["privateExponent"])] = rsa.RSAPrivateNumbers(
                pk["prime1"], pk["prime2"], pk["privateExponent"], pk["exponent1"], pk["exponent2"],
                pk["coefficient"], public).private_key()
        return bytes(key.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm())))

    dkim.RSASSA_PKCS1_v1_5_sign = sign  # dkim.DKIM.sign looks the name up in its module at each signature


def _header_names(raw: bytes) -> list[bytes]:
    head = raw[:raw.find(b"\r\n\r\n")]
    return [line for line in head.split(b"\r\n") if line and line[:1] not in (b" ", b"\t")]


def signer_of(config: Config) -> Signer | None:
    """The configured signer (None without outbound.dkim_key_file); DkimError when the key is unusable."""
    ob = config.outbound
    if not ob["dkim_key_file"]:
        return None
    path = Path(os.path.expanduser(ob["dkim_key_file"]))
    path = path if path.is_absolute() else config.base_dir / path
    try:
        key = path.read_bytes()
    except OSError as e:
        raise DkimError(f"outbound.dkim_key_file: cannot read {path}: {e.strerror or e}") from e
    # d= aligned with the From address's domain (DMARC) unless configured
    domain = (ob["dkim_domain"] or (ob["from_address"] or config.gateway_addresses[0]).rpartition("@")[2]).lower()
    algorithm = b"rsa-sha256" if b"PRIVATE KEY" in key else b"ed25519-sha256"
    signer = Signer(ob["dkim_selector"].encode("ascii"), domain.encode("ascii"), key.strip() + b"\n"
                    if algorithm == b"rsa-sha256" else key.strip(), algorithm)
    try:  # a key dkimpy cannot use fails here, at the start, not on the first mail
        signer.sign(b"From: check@example.com\r\nSubject: key check\r\n\r\nkey check\r\n")
    except Exception as e:  # noqa: BLE001 -- dkimpy's key errors vary (KeyFormatError, ValueError, ...)
        raise DkimError(f"outbound.dkim_key_file: {path} is not a usable DKIM private key: {e}") from e
    return signer
