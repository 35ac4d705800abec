"""Signup rate limits and the client address behind trusted proxies."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from digest.signup_form import clean_text

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
    """In-memory token buckets per key (one per window); each web process counts on its own."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.windows = [
            (float(cap), seconds)
            for cap, seconds in ((limits.per_minute, 60.0), (limits.per_hour, 3600.0))
            if cap > 0
        ]
        self.clock = clock
        self.buckets: dict[str, tuple[float, list[float]]] = {}

    def check(self, key: str) -> float | None:
        """Take one token; None when allowed, else the seconds until the next one."""
        now = self.clock()
        if len(self.buckets) > 50_000:
            self.buckets = {k: v for k, v in self.buckets.items() if now - v[0] < 3600}
        last, tokens = self.buckets.get(key, (now, [cap for cap, _ in self.windows]))
        tokens = [
            min(cap, left + (now - last) * cap / seconds)
            for (cap, seconds), left in zip(self.windows, tokens, strict=True)
        ]
        short = [
            (1 - left) * seconds / cap
            for (cap, seconds), left in zip(self.windows, tokens, strict=True)
            if left < 1
        ]
        if short:
            self.buckets[key] = (now, tokens)
            return max(short)
        self.buckets[key] = (now, [left - 1 for left in tokens])
        return None
