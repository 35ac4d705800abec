"""The delivery engine: claim under a lease, personalize, send, and record every outcome.

    feeder ──claims batches──► queue ──► connection workers (one per SMTP connection)
                                             │ assemble bytes, wait for the relay's rate,
                                             │ send, hand the outcome to the writer and
                                             ▼ wait until it is committed
                                        outcome writer (group commit, at least every 50 ms)

A connection never starts its next message before the outcome of its previous one is committed,
so a crash repeats at most the messages in flight (at-least-once, never a silent loss). Leases
are renewed while the worker runs and dated by the database clock; the final update checks the
lease owner. Policy rejections that hit everyone (5.7.x from a relay with an auth or DMARC
problem) trip a circuit breaker that pauses the edition instead of failing the whole list.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError

from digest import bounce_rules, messages, store, tokens
from digest.alerting import Alert, raise_alert
from digest.bootstrap import App, Clock, utcnow
from digest.config import Config, RelayConfig
from digest.dkim_sign import DkimKey, load_key
from digest.models import DeliveryKind, DeliveryStatus, SubscriberStatus, SubscriptionStatus
from digest.smtp import SendOutcome, SmtpConnection
from digest.store import ledger
from digest.store import readers as readers_store

log = logging.getLogger("digest.delivery")

TEST_TOKEN = "test"  # noqa: S105 (a marker, not a secret): test sends link to an inert page
THROTTLE_CODES = {421, 450, 451, 452, 454}
GROUP_WAIT = 0.02  # seconds an outcome may wait for others to share its transaction (limit: 50 ms)


class Sender(Protocol):
    """One SMTP connection's worth of sending (smtp.SmtpConnection, or a fake in unit tests)."""

    async def send(self, env_from: str, rcpt: str, data: bytes) -> SendOutcome: ...

    async def close(self) -> None: ...


@dataclass
class DeliverStats:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0
    lost_leases: int = 0
    paused: list[str] = field(default_factory=list)

    def add(self, status: str) -> None:
        setattr(self, status, getattr(self, status) + 1)

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


def worker_id() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{random.getrandbits(32):08x}"


def retry_delay(attempts: int, base: timedelta) -> timedelta:
    """Exponential back-off with ±20% jitter, capped at four hours."""
    delay = min(base.total_seconds() * (2 ** max(attempts - 1, 0)), 4 * 3600)
    return timedelta(seconds=delay * random.uniform(0.8, 1.2))


def sender_id(domain: str) -> str:
    """Feedback-ID's SenderId: stable, 5-15 characters of [A-Za-z0-9_-]."""
    core = "".join(ch for ch in domain.split(".")[0] if ch.isalnum() or ch in "-_")[:15]
    return core if len(core) >= 5 else (core + "digest")[:15]


# ---------------------------------------------------------------- rate and failover


class TokenBucket:
    """Messages per second for one relay; adaptive: a throttling reply halves it, successes restore it."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.configured = rate  # 0: no limit until the relay pushes back
        self.rate = rate
        self.clock = clock
        self.next_free = clock()  # the earliest moment the next message may start
        self.sent_recently: collections.deque[float] = collections.deque()

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

    async def send(self, env_from: str, rcpt: str, data: bytes) -> SendOutcome:
        outcome: SendOutcome | None = None
        capped = self.domain_buckets.get(rcpt.rpartition("@")[2].lower())
        if capped is not None:
            await capped.acquire()
        for i, conn in enumerate(self.conns):
            if self.down.get(i, 0) > time.monotonic() and i < len(self.conns) - 1:
                continue
            await self.buckets[i].acquire()
            outcome = await conn.send(env_from, rcpt, data)
            if outcome.verdict == "deferred" and outcome.code is None:
                self.down[i] = time.monotonic() + 30  # cannot connect: try the next relay
                continue
            if outcome.code in THROTTLE_CODES:
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


# ---------------------------------------------------------------- messages


class Assembler:
    """Per-edition message templates, built once and reused for every reader of the edition."""

    def __init__(self, cfg: Config, keys: Sequence[str], signer: DkimKey | None = None) -> None:
        self.cfg = cfg
        self.keys = keys
        self.signer = signer
        self.cache: dict[int, messages.MessageTemplate] = {}

    def template(self, c: ledger.Claimed) -> messages.MessageTemplate:
        cfg, e, lst = self.cfg, c.edition, c.mailing_list
        if e is None:
            d = c.delivery  # transactional mail carries its own rendered parts
            return messages.prepare(
                from_addr=cfg.sender.from_,
                subject=d.subject or "",
                text=d.body_text or "",
                html=d.body_html or "",
                reply_to=cfg.sender.reply_to,
                list_unsubscribe_post=False,
                extra=(("Auto-Submitted", "auto-generated"),),
            )
        if e.id in self.cache:
            return self.cache[e.id]
        if lst is None:
            raise LookupError(f"edition {e.id} has no list")
        tpl = messages.prepare(
            from_addr=lst.from_addr or cfg.sender.from_,
            reply_to=lst.reply_to or cfg.sender.reply_to,
            subject=e.subject,
            text=e.text,
            html=e.html,
            list_id=f"{lst.name} <{lst.slug}.{cfg.sender.domain}>",
            feedback_id=f"{e.id}:{lst.slug}:{e.kind}:{sender_id(cfg.sender.domain)}",
            extra=(("Precedence", "bulk"),),
        )
        self.cache[e.id] = tpl
        return tpl

    def message(self, c: ledger.Claimed, base_url: str, now: datetime) -> tuple[str, bytes]:
        """(envelope sender, message bytes) for one claimed delivery."""
        cfg, d = self.cfg, c.delivery
        bounce_domain = cfg.bounce.domain or cfg.sender.domain
        env_from = tokens.verp_address(d.id, self.keys[0], bounce_domain)
        tpl = self.template(c)
        token = c.subscription.token if c.subscription is not None else TEST_TOKEN
        unsub = None
        if d.kind != DeliveryKind.TRANSACTIONAL:
            unsub = f"<{base_url}/u/{token}>"
            if cfg.bounce.listen:
                unsub += f", <mailto:unsub+{token}@{bounce_domain}>"
        name = c.subscriber.name if c.subscriber is not None else ""
        raw = messages.assemble(
            tpl,
            to=messages.format_address(d.address, name),
            message_id=d.message_id,
            date=now,
            token=token,
            list_unsubscribe=unsub,
        )
        if self.signer is not None:
            raw = self.signer.sign(raw)
        return env_from, raw


def dkim_key(cfg: Config) -> DkimKey | None:
    """The configured DKIM key, checked at start; None when signing is off."""
    d = cfg.dkim
    if not (d.domain and d.selector and d.key_path):
        return None
    path = Path(d.key_path)
    return load_key(d.domain, d.selector, path if path.is_absolute() else cfg.base_dir / path)


def skip_reason(c: ledger.Claimed) -> str | None:
    """Why a claimed digest must not go out any more (the reader left or was suppressed)."""
    if c.delivery.kind != DeliveryKind.DIGEST:
        return None
    if c.subscription is None or c.subscription.status != SubscriptionStatus.CONFIRMED:
        return "reader is no longer subscribed"
    if c.subscriber is None or c.subscriber.status != SubscriberStatus.ACTIVE:
        return f"reader is {c.subscriber.status if c.subscriber else 'gone'}"
    return None


# ---------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    claimed: ledger.Claimed
    result: SendOutcome | None  # None: skipped before sending
    now: datetime
    note: str | None = None
    done: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def settle(cfg: Config, o: Outcome) -> tuple[str, dict[str, Any], bounce_rules.BounceClass | None]:
    """The delivery's new status and column values, and the bounce class of a rejection."""
    d, r = o.claimed.delivery, o.result
    values: dict[str, Any] = {"updated_at": o.now}
    if r is None:
        values.update(status=DeliveryStatus.SKIPPED, smtp_reply=o.note)
        return DeliveryStatus.SKIPPED, values, None
    values.update(attempts=d.attempts + 1, smtp_code=r.code, smtp_reply=r.reply, relay=r.relay)
    status = DeliveryStatus(r.verdict)
    klass = None
    if status == DeliveryStatus.SENT:
        values["sent_at"] = o.now
    elif status == DeliveryStatus.FAILED:
        klass = bounce_rules.classify(bounce_rules.enhanced_status(r.reply), r.code, r.reply)
        if klass == bounce_rules.BounceClass.POLICY and d.attempts == 0:
            # A policy rejection is retried once: if it was the relay's problem, it was for everyone
            # and the breaker has paused the edition by then.
            status = DeliveryStatus.DEFERRED
    if status == DeliveryStatus.DEFERRED:
        if o.now - d.created_at >= cfg.delivery.lifetime:
            status = DeliveryStatus.FAILED
            values["smtp_reply"] = f"gave up after {cfg.delivery.lifetime}: {r.reply}"
        else:
            values["next_attempt_at"] = o.now + retry_delay(d.attempts + 1, cfg.delivery.retry_base)
    values["status"] = status
    return status, values, klass


class OutcomeWriter:
    """Commits outcomes in groups, one transaction per group, each outcome within 50 ms.

    Every connection waits for its outcome before its next message, so once as many outcomes
    are queued as there are connections sending, nothing more can arrive: the group is
    committed at once. Otherwise it is committed when the oldest outcome has waited GROUP_WAIT.
    """

    def __init__(self, app_db: store.Database, cfg: Config, owner: str, senders: Callable[[], int]) -> None:
        self.db, self.cfg, self.owner = app_db, cfg, owner
        self.senders = senders  # how many connections are busy right now
        self.queue: asyncio.Queue[Outcome | None] = asyncio.Queue()

    async def record(self, o: Outcome) -> str:
        await self.queue.put(o)
        return await o.done

    async def _group(self, first: Outcome) -> tuple[list[Outcome], bool]:
        batch = [first]
        deadline = time.monotonic() + GROUP_WAIT
        while len(batch) < max(self.senders(), 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Not asyncio.wait_for(queue.get()): on Python 3.11 a timeout that races the get
            # drops the item, and an outcome nobody commits would hang its connection.
            getter = asyncio.ensure_future(self.queue.get())
            done, _ = await asyncio.wait({getter}, timeout=remaining)
            if getter not in done:
                getter.cancel()
                try:
                    item = await getter  # it may have completed while being cancelled
                except asyncio.CancelledError:
                    break
            else:
                item = getter.result()
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def run(self) -> None:
        while True:
            first = await self.queue.get()
            if first is None:
                return
            batch, stop = await self._group(first)
            try:
                results = await self._commit_with_retries(batch)
            except Exception as exc:  # the database is down: the rows keep their lease, nothing is lost
                for o in batch:
                    if not o.done.done():
                        o.done.set_exception(exc)
            else:
                for o, status in zip(batch, results, strict=True):
                    o.done.set_result(status)
            if stop:
                return

    async def _commit_with_retries(self, batch: Sequence[Outcome]) -> list[str]:
        """A deadlock, a serialization failure or a busy database is retried, not fatal."""
        for attempt in range(6):
            try:
                return await self._commit(batch)
            except DBAPIError as exc:
                if attempt == 5:
                    raise
                log.warning("recording %d outcome(s) failed (%s); retrying", len(batch), exc.orig)
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def _commit(self, batch: Sequence[Outcome]) -> list[str]:
        settled = [(o, *settle(self.cfg, o)) for o in batch]
        async with self.db.write() as s:
            lost = await ledger.finish_deliveries(
                s, self.owner, [(o.claimed.delivery.id, v) for o, _, v, _ in settled]
            )
            results = []
            for o, status, _, klass in settled:
                if o.claimed.delivery.id in lost:
                    log.warning(
                        "delivery %s: lease lost before its outcome (%s) was recorded: possible duplicate",
                        o.claimed.delivery.id,
                        status,
                    )
                    results.append("lost_leases")
                else:
                    results.append(await self._apply(s, o, status, klass))
        return results

    async def _apply(self, s: Any, o: Outcome, status: str, klass: bounce_rules.BounceClass | None) -> str:
        """What follows from an outcome besides the delivery row: watermark, events, suppression."""
        d, c = o.claimed.delivery, o.claimed
        if (
            status == DeliveryStatus.FAILED
            and d.subscription_id
            and d.from_seq is not None
            and d.to_seq is not None
        ):
            await ledger.rollback_watermark(s, d.subscription_id, d.from_seq, d.to_seq)
        if c.subscriber is not None and status in (DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN):
            reply = o.result.reply if o.result else None
            code = o.result.code if o.result else None
            await readers_store.add_event(
                s,
                "bounced" if klass else f"delivery_{status}",
                o.now,
                subscriber_id=c.subscriber.id,
                subscription_id=d.subscription_id,
                delivery_id=d.id,
                code=code,
                reply=reply,
                bounce_class=str(klass) if klass else None,
                at="smtp",
            )
            if klass == bounce_rules.BounceClass.HARD and d.kind == DeliveryKind.DIGEST:
                await ledger.suppress_subscriber(
                    s, c.subscriber.id, SubscriberStatus.BOUNCED, o.now, f"hard bounce at SMTP time: {reply}"
                )
        return str(status)

    async def stop(self) -> None:
        await self.queue.put(None)


# ---------------------------------------------------------------- circuit breaker


class Breaker:
    """Trips when the same rejection answers many different readers in a row on one edition."""

    def __init__(self, threshold: int = 10) -> None:
        self.threshold = threshold
        self.streak: dict[int, tuple[str, int]] = {}

    def observe(self, edition_id: int | None, outcome: SendOutcome | None) -> str | None:
        """The pause reason when this outcome trips the breaker, else None."""
        if edition_id is None or outcome is None:
            return None
        if outcome.verdict == "sent":
            self.streak.pop(edition_id, None)
            return None
        klass = bounce_rules.classify(
            bounce_rules.enhanced_status(outcome.reply), outcome.code, outcome.reply
        )
        if outcome.verdict != "failed" and klass != bounce_rules.BounceClass.POLICY:
            return None
        if klass != bounce_rules.BounceClass.POLICY:
            self.streak.pop(edition_id, None)
            return None
        key = f"{outcome.code} {bounce_rules.enhanced_status(outcome.reply) or ''}".strip()
        last, n = self.streak.get(edition_id, ("", 0))
        n = n + 1 if last == key else 1
        self.streak[edition_id] = (key, n)
        if n == self.threshold:
            return f"{n} readers in a row rejected with {key} by {outcome.relay}: {outcome.reply[:200]}"
        return None


def paused_alert(edition_id: int, reason: str, outcome: SendOutcome, now: datetime) -> Alert:
    """The alert for an edition the breaker paused; its title names a 5.7.x reply, since that
    points at the relay's own authentication or reputation rather than at the readers."""
    what = f"pausing edition {edition_id}"
    status = bounce_rules.enhanced_status(outcome.reply)
    title = f"a relay answers {status}: {what}" if status and status.startswith("5.7.") else what
    return Alert("edition_paused", title, f"{what}: {reason}", now)


# ---------------------------------------------------------------- the worker


async def _sleep_until(seconds: float, *events: asyncio.Event | None) -> None:
    """Idle for `seconds`, or less when any event is set (stop, or new mail was queued)."""
    waits = [asyncio.ensure_future(e.wait()) for e in events if e is not None]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    for e in events[1:]:
        if e is not None:
            e.clear()


async def deliver_due(
    app: App,
    clock: Clock = utcnow,
    *,
    senders: Sequence[Sender] | None = None,
    once: bool = True,
    stop: asyncio.Event | None = None,
    on_outcome: Callable[[str], None] | None = None,
    breaker_threshold: int = 10,
    wake: asyncio.Event | None = None,
) -> DeliverStats:
    """Send what is due until nothing is claimable (`once`) or until `stop` is set."""
    app_db, cfg, keys = app.db, app.cfg, app.keys
    owner = worker_id()
    conns = list(senders) if senders is not None else make_senders(cfg)
    stats = DeliverStats()
    assembler = Assembler(cfg, keys, dkim_key(cfg))
    editions: dict[int, tuple[Any, Any]] = {}  # edition id -> (Edition, MailingList), loaded once
    busy = [0]  # connections between taking a message and getting its outcome committed
    writer = OutcomeWriter(app_db, cfg, owner, lambda: busy[0])
    breaker = Breaker(breaker_threshold)
    lease = cfg.delivery.lease
    stop = stop or asyncio.Event()
    queue: asyncio.Queue[ledger.Claimed | None] = asyncio.Queue()
    in_flight: set[int] = set()
    paused: set[int] = set()
    drained = asyncio.Event()

    async def renew() -> None:
        while not drained.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), timeout=max(lease.total_seconds() / 3, 0.2))
            if drained.is_set():
                return
            with contextlib.suppress(Exception):
                async with app_db.write() as s:
                    await ledger.renew_leases(s, owner, await store.db_now(s, clock()) + lease)

    async def feed() -> None:
        idle = 0.0
        try:
            while not stop.is_set():
                if queue.qsize() > len(conns):
                    await asyncio.sleep(0.005)
                    continue
                try:
                    async with app_db.write() as s:
                        now = clock()
                        lease_now = await store.db_now(s, now)
                        await ledger.reap_expired_leases(s, lease_now)
                        ids = await ledger.claim_deliveries(
                            s, owner, now, lease, cfg.delivery.batch_size, lease_now
                        )
                except DBAPIError as exc:  # a deadlock or a busy database: try again shortly
                    log.warning("claiming deliveries failed (%s); retrying", exc.orig)
                    await _sleep_until(0.5, stop)
                    continue
                if ids:
                    idle = 0.0
                    async with app_db.read() as s:
                        for c in await ledger.load_claimed(s, ids, editions):
                            in_flight.add(c.delivery.id)
                            queue.put_nowait(c)
                    continue
                if once:
                    while in_flight and not stop.is_set():
                        await asyncio.sleep(0.01)
                    if not in_flight:
                        return
                idle = min(idle + 0.25, 2.0)
                await _sleep_until(idle, stop, wake)
        finally:
            for _ in conns:
                queue.put_nowait(None)

    async def work(conn: Sender) -> None:
        while (c := await queue.get()) is not None:
            try:
                if stop.is_set() or (c.edition is not None and c.edition.id in paused):
                    continue  # released below
                busy[0] += 1
                try:
                    await _one(conn, c)
                finally:
                    busy[0] -= 1
            finally:
                in_flight.discard(c.delivery.id)

    async def _one(conn: Sender, c: ledger.Claimed) -> None:
        reason = skip_reason(c)
        result: SendOutcome | None = None
        if reason is None:
            try:
                env_from, raw = assembler.message(c, cfg.web.base_url, clock())
            except Exception as exc:  # a broken edition must not stop the queue
                log.exception("delivery %s: cannot build the message", c.delivery.id)
                result = SendOutcome("failed", None, f"cannot build the message: {exc}", "")
            else:
                result = await conn.send(env_from, c.delivery.address, raw)
        status = await writer.record(Outcome(c, result, clock(), reason))
        stats.add(status)
        if on_outcome:
            on_outcome(status)
        trip = breaker.observe(c.edition.id if c.edition else None, result)
        if trip and c.edition is not None and result is not None:
            paused.add(c.edition.id)
            stats.paused.append(f"edition {c.edition.id}: {trip}")
            log.error("pausing edition %s: %s", c.edition.id, trip)
            raise_alert(paused_alert(c.edition.id, trip, result, clock()))
            async with app_db.write() as s:
                await ledger.pause_edition(s, c.edition.id, trip, clock())

    writer_task = asyncio.create_task(writer.run())
    renewer = asyncio.create_task(renew())
    try:
        await asyncio.gather(feed(), *(work(c) for c in conns))
    finally:
        drained.set()
        await writer.stop()
        await writer_task
        await renewer
        for conn in conns:
            await conn.close()
        async with app_db.write() as s:
            await ledger.release_owner(s, owner, clock())
            for edition_id in paused:
                # Messages in flight when the breaker tripped were deferred after the pause:
                # they go back to pending with the rest.
                await ledger.pause_edition(s, edition_id, "", clock())
            await ledger.finish_done_editions(s)
    return stats
