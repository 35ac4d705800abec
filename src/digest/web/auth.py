"""Operator credentials: the `[api] token` as a bearer header, or the admin session cookie that
the admin login form sets.

The token never travels in a URL: proxies and access logs keep URLs. Tokens are compared in
constant time over their SHA-256 digests, so neither their content nor their length shows in
the time an answer takes. The session cookie is signed (HMAC-SHA256 with the service's keys),
carries its own expiry, and names the token it was made from, so changing `[api] token` ends
every session.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime, timedelta

from fastapi import Request
from itsdangerous import BadSignature, URLSafeSerializer

COOKIE = "digest_admin"
SESSION = timedelta(hours=12)


def token_matches(given: str, expected: str | None) -> bool:
    if not expected:
        return False
    mine = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(mine, hashlib.sha256(expected.encode()).digest())


def bearer_ok(request: Request, expected: str | None) -> bool:
    """The request carries `Authorization: Bearer <expected>`."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_matches(given.strip(), expected)


def _token_tag(token: str) -> str:
    return hashlib.sha256(b"digest admin session\x00" + token.encode()).hexdigest()[:16]


class AdminSessions:
    """Mints and checks admin session cookies; the first key signs, every key verifies."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._signer = URLSafeSerializer(
            list(reversed(keys)), salt="admin-session", signer_kwargs={"digest_method": hashlib.sha256}
        )

    def mint(self, token: str, now: datetime) -> str:
        return self._signer.dumps({"exp": int((now + SESSION).timestamp()), "t": _token_tag(token)})

    def valid(self, cookie: str | None, token: str | None, now: datetime) -> bool:
        """The cookie was minted here for this token and has not expired."""
        if not cookie or not token or len(cookie) > 300:
            return False
        try:
            data = self._signer.loads(cookie)
        except BadSignature:
            return False
        if not isinstance(data, dict):
            return False
        expires, tag = data.get("exp"), data.get("t")
        return (
            isinstance(expires, int)
            and now.timestamp() < expires
            and isinstance(tag, str)
            and hmac.compare_digest(tag, _token_tag(token))
        )
