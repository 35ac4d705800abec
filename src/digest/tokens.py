"""Opaque tokens and signed addresses (pure; keys come in as parameters).

Unsubscribe and preference links carry a random per-subscription token: it reveals nothing about
the address, cannot be forged, never expires, and survives any rotation of the signing keys.
Bounce return paths (VERP) carry the delivery id and a short HMAC in lowercase hex, since some
MTAs fold the case of local parts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

TEST_TOKEN = "test"  # noqa: S105 (a marker, not a secret): test sends link to an inert page

VERP_PREFIX = "bounces"
_VERP = re.compile(r"^bounces\+(\d+)\.([0-9a-f]{10})@(.+)$")


def new_subscription_token() -> str:
    """32 random bytes, URL-safe: the key to one reader's unsubscribe and preferences pages."""
    return secrets.token_urlsafe(32)


def _mac(key: str, delivery_id: int) -> str:
    return hmac.new(key.encode(), f"verp:{delivery_id}".encode(), hashlib.sha256).hexdigest()[:10]


def verp_address(delivery_id: int, key: str, domain: str) -> str:
    """The envelope sender of one delivery: bounces come back naming exactly it."""
    return f"{VERP_PREFIX}+{delivery_id}.{_mac(key, delivery_id)}@{domain}"


def parse_verp(address: str, keys: Sequence[str]) -> int | None:
    """The delivery id in a VERP address, or None if it is not ours or its HMAC is wrong."""
    m = _VERP.match(address.strip().strip("<>").lower())
    if not m:
        return None
    delivery_id, mac = int(m.group(1)), m.group(2)
    if any(hmac.compare_digest(mac, _mac(k, delivery_id)) for k in keys):
        return delivery_id
    return None


# The "every new story" page of an edition: which stories it lists (the list's articles first seen
# in (after, upto] and published since a time) travels in its link, signed so that the page
# lists exactly what the edition's "and N more" counted, and nothing a link could make up.
_STORIES = re.compile(r"^(\d{1,18})-(\d{1,18})-(\d{1,12})-([0-9a-f]{16})$")


def _stories_mac(key: str, edition_id: int, after: int, upto: int, since: int) -> str:
    message = f"stories:{edition_id}:{after}:{upto}:{since}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:16]


def stories_range(key: str, edition_id: int, after: int, upto: int, since: int) -> str:
    """The signed range for the link to an edition's page of every new story."""
    return f"{after}-{upto}-{since}-{_stories_mac(key, edition_id, after, upto, since)}"


def parse_stories_range(value: str, edition_id: int, keys: Sequence[str]) -> tuple[int, int, int] | None:
    """(after, upto, since) of a signed range for this edition, or None if it is not one."""
    m = _STORIES.match(value)
    if not m:
        return None
    after, upto, since = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if any(hmac.compare_digest(m.group(4), _stories_mac(k, edition_id, after, upto, since)) for k in keys):
        return after, upto, since
    return None


def draft_copy_signature(key: str, edition_id: int) -> str:
    """What the web-copy link of a test send carries: a test edition is a draft, shown only to
    whoever was sent it, never to someone counting through /archive/SLUG/ID."""
    return hmac.new(key.encode(), f"test-copy:{edition_id}".encode(), hashlib.sha256).hexdigest()[:32]


def is_draft_copy_signature(value: str, edition_id: int, keys: Sequence[str]) -> bool:
    return bool(value) and any(hmac.compare_digest(value, draft_copy_signature(k, edition_id)) for k in keys)
