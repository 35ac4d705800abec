"""The delivery worker: claim under a lease, check, personalize, send, and record every outcome.

    feeder ──claims batches──► queue ──► connections (one task per SMTP connection)
                                             │ re-read the row just before sending (grouped)
                                             │ assemble bytes, wait for the relay's rate, send,
                                             │ hand the outcome to the writer and wait until
                                             ▼ it is committed
                                        outcome writer (group commit; waits out database outages)
    lease renewal (every lease/3)

All of them run in one `asyncio.TaskGroup`: when one fails, the others are cancelled and the error
reaches whoever started the worker (`digest run` restarts it with back-off; `digest worker` exits
non-zero for its service manager). A connection never starts its next message before the outcome
of its previous one is committed, so a crash repeats at most the messages in flight, and a
database outage pauses sending instead of losing outcomes.

Everything an operator or a reader changes reaches a running worker through the database: just
before each message the worker reads its row again (one query for every connection ready to
send), so a paused edition is handed back, a cancelled one is cancelled, a reader who left is
skipped and a row whose lease was lost is dropped. The circuit breaker pauses an edition in the
database too; `editions resume` is all it takes to go on.

Stopping (SIGTERM): no more claims; each connection finishes the message it is sending, the
outcomes are committed, and every row not sent is handed back at once. After
`[delivery] stop_timeout` whatever is still sending is abandoned to its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from digest import store
from digest.alerting import raise_alert
from digest.assembly import Assembler, dkim_key
from digest.bootstrap import App, Clock, utcnow
from digest.models import (
    DeliveryKind,
    Edition,
    EditionStatus,
    MailingList,
    SubscriberStatus,
    SubscriptionStatus,
)
from digest.outcomes import Breaker, Outcome, OutcomeWriter, paused_alert
from digest.relays import Sender, make_senders
from digest.smtp import SendOutcome
from digest.store import hot_path, ledger

log = logging.getLogger("digest.delivery")

OUTAGE_LOG_EVERY = 5.0  # seconds between "still cannot reach the database" lines


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
    kinds: Sequence[str] | None = None,
) -> DeliverStats:
    """Send what is due (of `kinds`, or all) until nothing is claimable (`once`) or until `stop`."""
    worker = Worker(
        app,
        clock,
        list(senders) if senders is not None else make_senders(app.cfg),
        once=once,
        stop=stop or asyncio.Event(),
        wake=wake,
        on_outcome=on_outcome,
        breaker=Breaker(breaker_threshold),
        kinds=kinds,
    )
    return await worker.run()


class Outage:
    """Rate-limited log lines for one kind of database trouble, and its back-off."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self.logged = 0.0
        self.attempts = 0

    def failed(self, exc: BaseException) -> float:
        """Log (at most every few seconds) and return how long to wait before trying again."""
        now = time.monotonic()
        if self.since is None:
            self.since, self.logged = now, now - OUTAGE_LOG_EVERY
        self.attempts += 1
        if now - self.logged >= OUTAGE_LOG_EVERY:
            self.logged = now
            log.warning(
                "%s failed for %.0f s (%s); retrying", self.what, now - self.since, store.describe_error(exc)
            )
        return float(min(0.05 * 2**self.attempts, 2.0))

    def recovered(self) -> None:
        if self.since is not None:
            log.warning("%s works again after %.1f s", self.what, time.monotonic() - self.since)
        self.since, self.attempts = None, 0


class SendChecks:
    """Reads, just before sending, what may have changed since the claim: one query for every
    connection that is about to send, so a busy worker pays one read per round, not per message."""

    def __init__(self, database: store.Database, owner: str, fast: hot_path.HotPath | None = None) -> None:
        self.db, self.owner, self.fast = database, owner, fast
        self.waiting: dict[int, asyncio.Future[ledger.SendCheck | None]] = {}
        self.reading = False
        self.outage = Outage("reading deliveries before sending")

    async def check(self, delivery_id: int) -> ledger.SendCheck | None:
        """The row as it is now; None when it is gone."""
        future: asyncio.Future[ledger.SendCheck | None] = asyncio.get_running_loop().create_future()
        self.waiting[delivery_id] = future
        if not self.reading:
            self.reading = True
            try:
                await asyncio.sleep(0)  # let the other connections that are ready join this read
                while self.waiting:
                    batch, self.waiting = self.waiting, {}
                    rows = await self._read(list(batch))
                    for key, waiter in batch.items():
                        waiter.set_result(rows.get(key))
            except BaseException as exc:
                for waiter in self.waiting.values():
                    if not waiter.done():
                        waiter.set_exception(exc)
                raise
            finally:
                self.reading = False
        return await future

    async def _read(self, ids: list[int]) -> dict[int, ledger.SendCheck]:
        while True:
            try:
                if self.fast is not None:
                    rows = await self.fast.send_checks(self.owner, ids)
                else:
                    async with self.db.read() as s:
                        rows = await ledger.send_checks(s, self.owner, ids)
            except Exception as exc:
                if not store.is_outage(exc):
                    raise
                await asyncio.sleep(self.outage.failed(exc))
                continue
            self.outage.recovered()
            return rows


def skip_reason(kind: str, check: ledger.SendCheck) -> str | None:
    """Why a claimed digest must not go out any more: the reader left or was suppressed."""
    if kind != DeliveryKind.DIGEST:
        return None
    if check.subscription_status != SubscriptionStatus.CONFIRMED:
        return "reader is no longer subscribed"
    if check.subscriber_status != SubscriberStatus.ACTIVE:
        return f"reader is {check.subscriber_status or 'gone'}"
    return None


class Worker:
    """One worker process's delivery loop (see the module docstring)."""

    def __init__(
        self,
        app: App,
        clock: Clock,
        conns: list[Sender],
        *,
        once: bool,
        stop: asyncio.Event,
        wake: asyncio.Event | None,
        on_outcome: Callable[[str], None] | None,
        breaker: Breaker,
        kinds: Sequence[str] | None,
    ) -> None:
        self.app, self.cfg, self.clock, self.conns = app, app.cfg, clock, conns
        self.once, self.stop, self.wake, self.on_outcome = once, stop, wake, on_outcome
        self.breaker, self.kinds = breaker, kinds
        self.owner = worker_id()
        self.stats = DeliverStats()
        # Signed here, in a thread, not by the assembler: dkimpy's RSA is pure Python and would
        # stop every connection on the event loop for the milliseconds each signature takes.
        self.signer = dkim_key(self.cfg)
        self.assembler = Assembler(self.cfg, app.keys)
        self.editions: dict[int, tuple[Edition, MailingList | None]] = {}  # once per edition
        self.busy = 0  # connections between taking a message and getting its outcome committed
        # The check before each send and the record after it skip the ORM (see store.hot_path).
        self.fast = hot_path.hot_path(app.db.url)
        self.writer = OutcomeWriter(app.db, self.cfg, self.owner, self.fast)
        self.checks = SendChecks(app.db, self.owner, self.fast)
        self.queue: asyncio.Queue[ledger.Claimed | None] = asyncio.Queue()
        self.held: set[int] = set()  # claimed by this worker and not yet settled
        self.finished = asyncio.Event()  # the connections are done: renewal and the deadline end
        self.renewal_failures = 0

    async def run(self) -> DeliverStats:
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(self.writer.run(), name="outcome writer")
                tg.create_task(self._renew_leases(), name="lease renewal")
                tg.create_task(self._feed(), name="feeder")
                conns = [
                    tg.create_task(self._connection(c), name=f"connection {i}")
                    for i, c in enumerate(self.conns)
                ]
                tg.create_task(self._deadline([*conns, writer]), name="stop deadline")
                await asyncio.wait(conns)
                await self.writer.stop()
                self.finished.set()
        finally:
            self.finished.set()
            await self._close()
        return self.stats

    async def _feed(self) -> None:
        idle = 0.0
        outage = Outage("claiming deliveries")
        try:
            while not self.stop.is_set():
                # Claim only once the writer is caught up: after an outage, the outcomes waiting to be
                # recorded must land before this worker's own expired leases can be reaped.
                if self.queue.qsize() > len(self.conns) or not self.writer.idle():
                    await _sleep_until(0.005, self.stop)
                    continue
                try:
                    claimed = await self._claim()
                except Exception as exc:
                    if not store.is_outage(exc):
                        raise
                    await _sleep_until(outage.failed(exc), self.stop)
                    continue
                outage.recovered()
                if claimed:
                    idle = 0.0
                    for c in claimed:
                        self.held.add(c.delivery.id)
                        self.queue.put_nowait(c)
                    continue
                if self.once:
                    while self.held and not self.stop.is_set():
                        await asyncio.sleep(0.01)
                    if not self.held:
                        return
                idle = min(idle + 0.25, 2.0)
                await _sleep_until(idle, self.stop, self.wake)
        finally:
            for _ in self.conns:
                self.queue.put_nowait(None)

    async def _claim(self) -> list[ledger.Claimed]:
        async with self.app.db.write() as s:
            now = self.clock()
            lease_now = await store.db_now(s, now)
            await ledger.reap_expired_leases(s, lease_now)
            ids = await ledger.claim_deliveries(
                s,
                self.owner,
                now,
                self.cfg.delivery.lease,
                self.cfg.delivery.batch_size,
                lease_now,
                self.kinds,
            )
            # Loaded in the claiming transaction: a claimed row is never left unloaded by an outage.
            return await ledger.load_claimed(s, ids, self.editions) if ids else []

    async def _connection(self, conn: Sender) -> None:
        while (c := await self.queue.get()) is not None:
            try:
                if not self.stop.is_set():
                    self.busy += 1
                    try:
                        await self._deliver_one(conn, c)
                    finally:
                        self.busy -= 1
            finally:
                self.held.discard(c.delivery.id)

    async def _deliver_one(self, conn: Sender, c: ledger.Claimed) -> None:
        d = c.delivery
        await conn.pace(d.address)
        check = await self.checks.check(d.id)
        if check is None or not check.held:
            self.stats.lost_leases += 1
            log.warning("delivery %s: no longer leased to this worker; not sent here", d.id)
            return
        if check.edition_status in (EditionStatus.PAUSED, EditionStatus.CANCELLED):
            await self._hand_back(c, check.edition_status)
            return
        reason = skip_reason(d.kind, check)
        result: SendOutcome | None = None
        if reason is None:
            result = await self._send(conn, c)
        status = await self.writer.record(Outcome(c, result, self.clock(), reason))
        self.stats.add(status)
        if self.on_outcome:
            self.on_outcome(status)
        trip = self.breaker.observe(c.edition.id if c.edition else None, result)
        if trip and c.edition is not None and result is not None:
            await self._pause(c.edition.id, trip, result)

    async def _send(self, conn: Sender, c: ledger.Claimed) -> SendOutcome:
        """Send one message; a message that cannot be built, or an address the client cannot encode,
        fails that delivery alone, with the reason."""
        try:
            env_from, rcpt, raw = self.assembler.message(c, self.cfg.web.base_url, self.clock())
            if self.signer is not None:
                raw = await asyncio.to_thread(self.signer.sign, raw)
        except Exception as exc:
            log.exception("delivery %s: cannot build the message", c.delivery.id)
            return SendOutcome("failed", None, f"cannot build the message: {exc}", "")
        try:
            return await conn.send(env_from, rcpt, raw)
        except (UnicodeError, ValueError) as exc:
            # Raised while encoding the envelope, before anything reached the relay.
            return SendOutcome("failed", None, f"cannot send to {c.delivery.address!r}: {exc}", "")

    async def _hand_back(self, c: ledger.Claimed, edition_status: str) -> None:
        """An edition paused since the claim: the row goes back to pending for `editions resume`.
        One cancelled since: the row is cancelled and its reader's articles wait for the next digest."""
        now = self.clock()
        async with self.app.db.write() as s:
            if edition_status == EditionStatus.PAUSED:
                await ledger.release_leases(s, self.owner, [c.delivery.id], now)
                return
            for d in await ledger.cancel_claimed(s, self.owner, [c.delivery.id], now):
                if d.subscription_id is not None and d.from_seq is not None and d.to_seq is not None:
                    await ledger.rollback_watermark(s, d.subscription_id, d.from_seq, d.to_seq)

    async def _pause(self, edition_id: int, reason: str, result: SendOutcome) -> None:
        """The breaker tripped: the edition is paused in the database, where every worker sees it
        before its next message, and where `editions resume` lifts it."""
        self.stats.paused.append(f"edition {edition_id}: {reason}")
        log.error("pausing edition %s: %s", edition_id, reason)
        raise_alert(paused_alert(edition_id, reason, result, self.clock()))
        async with self.app.db.write() as s:
            await ledger.pause_edition(s, edition_id, reason, self.clock())

    async def _renew_leases(self) -> None:
        lease = self.cfg.delivery.lease
        every = max(lease.total_seconds() / 3, 0.2)
        outage = Outage("renewing leases")
        wait = every
        while not self.finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), timeout=wait)
            if self.finished.is_set():
                return
            try:
                async with self.app.db.write() as s:
                    await ledger.renew_leases(s, self.owner, await store.db_now(s, self.clock()) + lease)
                    if self.renewal_failures:
                        await store.add_to_counter(s, "lease_renewal_failures", self.renewal_failures)
                        self.renewal_failures = 0
            except Exception as exc:
                if not store.is_outage(exc):
                    raise
                # Counted here and written once the database answers (/metrics reads it there).
                self.renewal_failures += 1
                wait = outage.failed(exc)
                continue
            outage.recovered()
            wait = every

    async def _deadline(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        """After a stop, give what is in flight `[delivery] stop_timeout` to finish, then abandon it
        (its rows stay leased and go back to pending when the lease runs out)."""
        stopped = asyncio.ensure_future(self.stop.wait())
        finished = asyncio.ensure_future(self.finished.wait())
        try:
            await asyncio.wait({stopped, finished}, return_when=asyncio.FIRST_COMPLETED)
            if self.finished.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), self.cfg.delivery.stop_timeout.total_seconds())
            if not self.finished.is_set():
                log.warning(
                    "stop: %d message(s) still in flight after %s; leaving them to their lease",
                    self.busy,
                    self.cfg.delivery.stop_timeout,
                )
                for task in tasks:
                    task.cancel()
        finally:
            stopped.cancel()
            finished.cancel()

    async def _close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                await conn.close()
        if self.fast is not None:
            await self.fast.close()
        try:
            async with self.app.db.write() as s:
                released = await ledger.release_owner(s, self.owner, self.clock())
                await ledger.finish_done_editions(s)
        except Exception as exc:
            if not store.is_outage(exc):
                raise
            log.warning(
                "could not hand back this worker's claimed rows (%s); they return when their lease ends",
                store.describe_error(exc),
            )
            return
        if released:
            log.info("handed back %d claimed message(s) not sent", released)


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
