"""Form protection: a signed double-submit CSRF token, and a signed render time for the honeypot.

The cookie holds a random value; every HTML form carries that value signed with the service's
key (salt "csrf"). A page on another site can neither read the cookie nor mint a matching field,
and a leaked field is useless without the cookie it was made for. The render time is signed too,
so a bot cannot claim it waited.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from itsdangerous import BadSignature, URLSafeSerializer

COOKIE = "digest_csrf"
FIELD = "csrf"
STAMP_FIELD = "ts"
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{32,64}")


class FormGuard:
    """Mints and checks CSRF tokens and form render stamps with the first key; all keys verify."""

    def __init__(self, keys: Sequence[str]) -> None:
        ordered = list(reversed(keys))  # itsdangerous signs with the last key of its list
        self._csrf = URLSafeSerializer(ordered, salt="csrf")
        self._stamp = URLSafeSerializer(ordered, salt="form-time")

    @staticmethod
    def cookie_value(existing: str | None) -> tuple[str, bool]:
        """(the cookie's value, whether it must be set on the response)."""
        if existing and _COOKIE_VALUE.fullmatch(existing):
            return existing, False
        return secrets.token_urlsafe(32), True

    def token_for(self, cookie: str) -> str:
        return self._csrf.dumps(cookie)

    def valid(self, cookie: str | None, token: object) -> bool:
        if not cookie or not isinstance(token, str) or len(token) > 300:
            return False
        try:
            signed = self._csrf.loads(token)
        except BadSignature:
            return False
        return isinstance(signed, str) and hmac.compare_digest(signed, cookie)

    def stamp(self, now: datetime) -> str:
        return self._stamp.dumps(round(now.timestamp(), 3))

    def too_fast(self, stamp: object, now: datetime, minimum: timedelta) -> bool:
        """True when the form came back sooner than a person could fill it, or with a bad stamp."""
        if not isinstance(stamp, str) or len(stamp) > 200:
            return True
        try:
            rendered = self._stamp.loads(stamp)
        except BadSignature:
            return True
        if not isinstance(rendered, int | float) or isinstance(rendered, bool):
            return True
        return now.timestamp() - float(rendered) < minimum.total_seconds()
