"""DKIM signing of the final message bytes (dkimpy), per STANDARDS section F.

Relaxed/relaxed canonicalization, rsa-sha256, no `l=` tag, and a header list that covers the
list headers and over-signs From, Subject, List-Unsubscribe and List-Unsubscribe-Post (each is
named once more than it appears, so a second copy added in transit breaks the signature).
dkimpy's pure-Python RSA costs several milliseconds per message: at volume, sign at the relay.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import dkim
from dkim.crypto import parse_pem_private_key

from digest.errors import ConfigError

SIGNED = [
    b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
    b"list-id", b"list-unsubscribe", b"list-unsubscribe-post", b"feedback-id", b"reply-to",
]  # fmt: skip
OVERSIGNED = [b"from", b"subject", b"list-unsubscribe", b"list-unsubscribe-post"]
MIN_BITS = 2048


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    private_key: bytes
    bits: int

    def sign(self, message: bytes) -> bytes:
        """The message with its DKIM-Signature header prepended; sign last, change nothing after."""
        signature: bytes = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=SIGNED + OVERSIGNED,
            linesep=b"\r\n",
        )
        return signature + message


def load_key(domain: str, selector: str, key_path: Path) -> DkimKey:
    """Read and check the private key at start, so a bad key stops the service, not a send."""
    try:
        pem = key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"[dkim] key_path {key_path}: cannot read it ({exc.strerror})") from None
    try:
        parsed = parse_pem_private_key(pem)
    except Exception:
        raise ConfigError(f"[dkim] key_path {key_path}: not a PEM RSA private key") from None
    bits = int(parsed["modulus"]).bit_length()
    if bits < MIN_BITS:
        raise ConfigError(
            f"[dkim] key_path {key_path}: RSA key of {bits} bits; at least {MIN_BITS} are required"
        )
    return DkimKey(domain=domain, selector=selector, private_key=pem, bits=bits)


def public_record(key: DkimKey) -> str:
    """The TXT record to publish at SELECTOR._domainkey.DOMAIN."""
    parsed = parse_pem_private_key(key.private_key)
    n, e = int(parsed["modulus"]), int(parsed["publicExponent"])
    der = _rsa_public_der(n, e)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der_int(v: int) -> bytes:
    body = v.to_bytes((v.bit_length() + 8) // 8, "big")
    return b"\x02" + _der_len(len(body)) + body


def _rsa_public_der(n: int, e: int) -> bytes:
    """SubjectPublicKeyInfo for an RSA key, as DKIM's p= tag expects."""
    rsa_key = b"\x30" + _der_len(len(_der_int(n) + _der_int(e))) + _der_int(n) + _der_int(e)
    bitstring = b"\x03" + _der_len(len(rsa_key) + 1) + b"\x00" + rsa_key
    algorithm = bytes.fromhex("300d06092a864886f70d0101010500")
    inner = algorithm + bitstring
    return b"\x30" + _der_len(len(inner)) + inner
