"""Outcomes: what each send means for the ledger, committed in groups, and the circuit breaker.

A connection never starts its next message before the outcome of its previous one is committed.
When the database cannot take an outcome, the writer keeps it and retries with back-off for as
long as it takes, so sending pauses during an outage instead of sending past unrecorded mail.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from digest import bounce_rules, store
from digest.alerting import Alert
from digest.config import Config
from digest.models import DeliveryKind, DeliveryStatus, SubscriberStatus
from digest.smtp import SendOutcome
from digest.store import hot_path, ledger
from digest.store import readers as readers_store

log = logging.getLogger("digest.delivery")

OUTAGE_LOG_EVERY = 5.0  # seconds between "still waiting for the database" lines


def retry_delay(attempts: int, base: timedelta) -> timedelta:
    """Exponential back-off with ±20% jitter, capped at four hours."""
    delay = min(base.total_seconds() * (2 ** max(attempts - 1, 0)), 4 * 3600)
    return timedelta(seconds=delay * random.uniform(0.8, 1.2))


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
    """Commits outcomes in groups, one transaction per group, continuously.

    When nothing is being committed, an outcome is committed at once; the outcomes that arrive
    while a commit runs form the next group. Every connection waits for its outcome before its
    next message, so a group is never larger than the number of connections, and no outcome
    waits longer than one commit for its turn. A group of messages that all went out is one
    statement on a connection of its own (store.hot_path); anything else goes through a
    session, with its events, watermarks and suppressions.
    """

    def __init__(
        self, app_db: store.Database, cfg: Config, owner: str, fast: hot_path.HotPath | None = None
    ) -> None:
        self.db, self.cfg, self.owner = app_db, cfg, owner
        self.queue: asyncio.Queue[Outcome | None] = asyncio.Queue()
        self.backlog = 0  # outcomes taken from the queue and not yet committed
        self.healthy = asyncio.Event()  # cleared while the database refuses outcomes
        self.healthy.set()
        self.sent = fast

    async def record(self, o: Outcome) -> str:
        self.queue.put_nowait(o)
        return await o.done

    def _group(self, first: Outcome) -> tuple[list[Outcome], bool]:
        """The first outcome and every one that arrived while the last group was committed."""
        batch = [first]
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def idle(self) -> bool:
        """No outcome is waiting to be committed (the feeder claims only then, see Worker)."""
        return self.queue.empty() and self.backlog == 0

    async def run(self) -> None:
        while True:
            first = await self.queue.get()
            if first is None:
                return
            batch, stop = self._group(first)
            self.backlog = len(batch)
            results = await self._commit_until_recorded(batch)
            self.backlog = 0
            for o, status in zip(batch, results, strict=True):
                o.done.set_result(status)
            if stop:
                return

    async def _commit_until_recorded(self, batch: Sequence[Outcome]) -> list[str]:
        """Commit, riding out an outage of any length: these messages went out, and their outcome
        must be on record before their connections send anything else. An error that is not an
        outage (a bug, a constraint) is retried a few times, then raised for the supervisor."""
        started = time.monotonic()
        attempt, logged = 0, -OUTAGE_LOG_EVERY
        while True:
            try:
                results = await self._commit(batch)
            except Exception as exc:
                if not store.is_outage(exc) and attempt >= 5:
                    raise
                attempt += 1
                self.healthy.clear()
                waited = time.monotonic() - started
                if waited - logged >= OUTAGE_LOG_EVERY:
                    logged = waited
                    log.warning(
                        "cannot record %d outcome(s) for %.0f s (%s); sending is paused until the "
                        "database answers",
                        len(batch),
                        waited,
                        store.describe_error(exc),
                    )
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
                continue
            if attempt:
                log.warning(
                    "the database answers again after %.1f s: %d outcome(s) recorded, sending resumes",
                    time.monotonic() - started,
                    len(batch),
                )
            self.healthy.set()
            return results

    async def _commit(self, batch: Sequence[Outcome]) -> list[str]:
        settled = [(o, *settle(self.cfg, o)) for o in batch]
        if self.sent is not None and all(status == DeliveryStatus.SENT for _, status, _, _ in settled):
            return await self._commit_sent(settled)
        async with self.db.write() as s:
            lost = await ledger.finish_deliveries(
                s, self.owner, [(o.claimed.delivery.id, v) for o, _, v, _ in settled]
            )
            results = []
            for o, status, _, klass in settled:
                if o.claimed.delivery.id in lost:
                    results.append(_lost_lease(o, status))
                else:
                    results.append(await self._apply(s, o, status, klass))
            deferred = [
                o.claimed.delivery.id for o, status, _, _ in settled if status == DeliveryStatus.DEFERRED
            ]
            if deferred:
                # Refused while its edition was being paused (the breaker's in-flight messages):
                # such a row waits as pending for `editions resume`, not for a retry timer.
                await ledger.hold_for_paused_editions(s, deferred, batch[0].now)
        return results

    async def _commit_sent(
        self, settled: Sequence[tuple[Outcome, str, dict[str, Any], bounce_rules.BounceClass | None]]
    ) -> list[str]:
        """A group where every message went out: no events, watermarks or suppressions follow."""
        assert self.sent is not None
        lost = await self.sent.record_sent(
            self.owner,
            [
                hot_path.Sent(
                    o.claimed.delivery.id, v["attempts"], v["smtp_code"], v["smtp_reply"], v["relay"], o.now
                )
                for o, _, v, _ in settled
            ],
        )
        return [
            _lost_lease(o, status) if o.claimed.delivery.id in lost else status for o, status, _, _ in settled
        ]

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


def _lost_lease(o: Outcome, status: str) -> str:
    log.warning(
        "delivery %s: lease lost before its outcome (%s) was recorded: possible duplicate",
        o.claimed.delivery.id,
        status,
    )
    return "lost_leases"


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
