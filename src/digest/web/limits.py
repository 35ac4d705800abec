"""Signup rate limits, shared by every process through the database, and the client address
behind trusted proxies."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from digest.signup_form import clean_text
from digest.store import Database
from digest.store import limits as limits_store

log = logging.getLogger("digest")


class ProxyTrust:
    """The client's address: `X-Forwarded-For` counts only when the peer is a trusted proxy."""

    def __init__(self, trusted: Sequence[str]) -> None:
        nets = []
        for entry in trusted:
            try:
                nets.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                log.warning("[web] trusted_proxies: %r is not an address or network; ignored", entry)
        self.nets = tuple(nets)

    def _trusted(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in net for net in self.nets)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        peer_ip = _ip(peer)
        if peer_ip is None:
            return clean_text(peer, 64) if peer else None
        if not forwarded_for or not self._trusted(peer_ip):
            return str(peer_ip)
        # Walk from the right: each trusted hop vouches for the one before it, nothing further.
        client = peer_ip
        for hop in reversed(forwarded_for.split(",")):
            hop_ip = _ip(hop)
            if hop_ip is None:
                break
            client = hop_ip
            if not self._trusted(hop_ip):
                break
        return str(client)


def _ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    text = value.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class RateLimits:
    """Requests allowed per client address; 0 switches a window off."""

    per_minute: int = 5
    per_hour: int = 20


class RateLimiter:
    """Signup windows per client address, counted in the database (`store.limits`), so every web
    process and every restart sees the same counts. A window starts at a client's first request
    and lasts its length; rows of finished windows are pruned by `prune`."""

    def __init__(self, limits: RateLimits, secret: str) -> None:
        self.windows = [
            (cap, timedelta(seconds=seconds))
            for cap, seconds in ((limits.per_minute, 60), (limits.per_hour, 3600))
            if cap > 0
        ]
        self._secret = secret.encode()

    def key(self, client: str, length: timedelta) -> str:
        message = f"{int(length.total_seconds())}:{client}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    async def check(self, db: Database, client: str, now: datetime) -> float | None:
        """Count one request; None when allowed, else the seconds until the client may try again."""
        if not self.windows:
            return None
        waits = []
        async with db.write() as s:
            for cap, length in self.windows:
                hits, start = await limits_store.count_hit(s, self.key(client, length), length, now)
                if hits > cap:
                    waits.append((start + length - now).total_seconds())
        return max(waits) if waits else None

    async def prune(self, db: Database, now: datetime) -> int:
        longest = max((length for _, length in self.windows), default=timedelta())
        async with db.write() as s:
            return await limits_store.delete_windows_before(s, now - longest)
