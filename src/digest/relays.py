"""Relays as the worker sees them: failover between configured relays and an adaptive rate per relay.

Rate, concurrency and `domain_rates` are enforced per process (every worker has its own buckets
and connections); docs/delivery.md gives the arithmetic for several processes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from digest.config import Config, RelayConfig
from digest.smtp import SendOutcome, SmtpConnection

log = logging.getLogger("digest.delivery")

THROTTLE_CODES = {421, 450, 451, 452, 454}
# A 4xx is a request to slow down when it says so; greylisting ("try again later") is about one
# recipient and must not slow down everyone else.
_SLOW_DOWN = re.compile(r"rate|too many|too fast|slow down|throttl|limit|exceeded", re.IGNORECASE)


def asks_to_slow_down(code: int | None, reply: str) -> bool:
    return code == 421 or (code in THROTTLE_CODES and bool(_SLOW_DOWN.search(reply)))


class Sender(Protocol):
    """One SMTP connection's worth of sending (FailoverSender, or a fake in unit tests)."""

    async def pace(self, rcpt: str) -> None:
        """Wait for this recipient's turn under the rate limits; the worker checks the delivery
        after this wait, so nothing it learns during the wait is missed."""

    async def send(self, env_from: str, rcpt: str, data: bytes) -> SendOutcome: ...

    async def close(self) -> None: ...


class TokenBucket:
    """Messages per second for one relay; adaptive: a throttling reply halves it, successes restore it."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.configured = rate  # 0: no limit until the relay pushes back
        self.rate = rate
        self.clock = clock
        self.next_free = clock()  # the earliest moment the next message may start
        self.sent_recently: collections.deque[float] = collections.deque()
        self.last_throttle = -1.0

    async def acquire(self) -> None:
        now = self.clock()
        while self.sent_recently and now - self.sent_recently[0] >= 1.0:
            self.sent_recently.popleft()
        self.sent_recently.append(now)
        if self.rate <= 0:
            return
        # Reserve the next free slot before sleeping, so concurrent connections space out evenly
        # instead of all waking at once.
        slot = max(now, self.next_free)
        self.next_free = slot + 1.0 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)

    def throttled(self) -> None:
        now = self.clock()
        if now - self.last_throttle < 1.0:
            return  # every connection hears the same push-back: halve once per second, not per reply
        self.last_throttle = now
        observed = max(len(self.sent_recently), 1)
        current = self.rate if self.rate > 0 else float(observed)
        self.rate = max(current / 2, 0.5)
        log.warning("relay asked us to slow down: rate now %.1f/s", self.rate)

    def succeeded(self) -> None:
        if self.rate <= 0:
            return
        ceiling = self.configured if self.configured > 0 else float("inf")
        self.rate = min(self.rate * 1.01 + 0.01, ceiling)
        if self.configured <= 0 and self.rate > 4 * max(len(self.sent_recently), 1):
            self.rate = 0.0  # back to unlimited once we are far above what we actually send


class FailoverSender:
    """One logical connection that uses the first relay that is up, in configured order."""

    def __init__(
        self,
        relays: Sequence[RelayConfig],
        buckets: Sequence[TokenBucket],
        down: dict[int, float],
        domain_buckets: dict[str, TokenBucket] | None = None,
    ) -> None:
        self.conns = [SmtpConnection(r) for r in relays]
        self.buckets = buckets
        self.down = down  # relay index → monotonic time until which it is skipped (shared)
        self.domain_buckets = domain_buckets or {}  # recipient domain → static cap (shared)
        self.paced: int | None = None  # the relay whose rate slot `pace` took for the next send

    def _usable(self, i: int) -> bool:
        return self.down.get(i, 0) <= time.monotonic() or i == len(self.conns) - 1

    async def pace(self, rcpt: str) -> None:
        capped = self.domain_buckets.get(rcpt.rpartition("@")[2].lower())
        if capped is not None:
            await capped.acquire()
        self.paced = next(i for i in range(len(self.conns)) if self._usable(i))
        await self.buckets[self.paced].acquire()

    async def send(self, env_from: str, rcpt: str, data: bytes) -> SendOutcome:
        outcome: SendOutcome | None = None
        paced, self.paced = self.paced, None
        for i, conn in enumerate(self.conns):
            if not self._usable(i):
                continue
            if i != paced:
                await self.buckets[i].acquire()
            outcome = await conn.send(env_from, rcpt, data)
            if outcome.verdict == "deferred" and outcome.code is None:
                self.down[i] = time.monotonic() + 30  # cannot connect: try the next relay
                continue
            if asks_to_slow_down(outcome.code, outcome.reply):
                self.buckets[i].throttled()
            elif outcome.verdict == "sent":
                self.buckets[i].succeeded()
                self.down.pop(i, None)
            return outcome
        assert outcome is not None
        return outcome

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()


def make_senders(cfg: Config) -> list[Sender]:
    relays = cfg.mail_relays
    buckets = [TokenBucket(r.rate) for r in relays]
    down: dict[int, float] = {}
    domains = {d.lower(): TokenBucket(rate) for d, rate in cfg.delivery.domain_rates.items() if rate > 0}
    return [FailoverSender(relays, buckets, down, domains) for _ in range(relays[0].concurrency)]
