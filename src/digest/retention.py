"""What digest keeps, for how long, and erasure on request.

`prune` applies `[retention]`: finished deliveries and audit events past their age are deleted
(and the bounce inbox's memory of the messages it dealt with, with the events), raw bounce messages
are dropped from their events, finished editions lose their rendered bodies.
Each step works in batches of `[retention] batch_size` rows, one short transaction per batch, so
senders and the web app never wait long for a lock. Suppressions and erasures are never pruned:
they are what keeps a reader who left from being mailed again.

`erase_reader` replaces a reader's address by a hash everywhere it is kept and clears their name
and consent details; the row stays, suppressed, so an import or an operator cannot add the address
back by accident (a new self-signup with double opt-in is new consent, and is allowed).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from digest import bootstrap, messages, readers
from digest.errors import UsageError
from digest.models import INBOUND_EVENTS
from digest.store import inbound as inbound_store
from digest.store import readers as readers_store
from digest.store import retention as retention_store

log = logging.getLogger("digest.retention")

KEPT_EVENTS = ("suppressed", "unsuppressed", "erased")
PRUNED_BODY = "<p>This digest is past its retention period; its text is no longer kept.</p>"


@dataclass
class PruneReport:
    deleted_deliveries: int = 0
    deleted_events: int = 0
    trimmed_raw_bounces: int = 0
    forgotten_inbound: int = 0
    stripped_editions: int = 0
    batches: int = 0
    cutoffs: dict[str, datetime] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "deliveries_deleted": self.deleted_deliveries,
            "events_deleted": self.deleted_events,
            "raw_bounces_trimmed": self.trimmed_raw_bounces,
            "inbound_messages_forgotten": self.forgotten_inbound,
            "edition_bodies_dropped": self.stripped_editions,
        }


async def prune(app: bootstrap.App, now: datetime, *, batch_size: int | None = None) -> PruneReport:
    """Apply `[retention]` once, batch by batch; safe to run while everything else runs."""
    r = app.cfg.retention
    size = batch_size or r.batch_size
    report = PruneReport(
        cutoffs={
            "events": now - r.events,
            "raw_bounces": now - r.raw_bounces,
            "edition_bodies": now - r.edition_bodies,
            "deliveries": now - r.deliveries,
        }
    )
    while n := await _batch(
        app, lambda s: inbound_store.trim_raw_batch(s, INBOUND_EVENTS, now - r.raw_bounces, size)
    ):
        report.trimmed_raw_bounces += n
        report.batches += 1
    while n := await _batch(
        app, lambda s: retention_store.delete_old_events(s, now - r.events, KEPT_EVENTS, size)
    ):
        report.deleted_events += n
        report.batches += 1
    while n := await _batch(app, lambda s: retention_store.forget_inbound_messages(s, now - r.events, size)):
        report.forgotten_inbound += n
        report.batches += 1
    bodies_before = now - r.edition_bodies
    while n := await _batch(
        app, lambda s: retention_store.strip_edition_bodies(s, bodies_before, PRUNED_BODY, size)
    ):
        report.stripped_editions += n
        report.batches += 1
    while True:
        async with retention_store.bulk_delete(app.db) as s:
            n = await retention_store.delete_old_deliveries(s, now - r.deliveries, size)
        if not n:
            break
        report.deleted_deliveries += n
        report.batches += 1
        await asyncio.sleep(0)
    if any(report.counts().values()):
        log.info("prune: %s", ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.counts().items()))
    return report


async def _batch(app: bootstrap.App, step: Callable[[AsyncSession], Awaitable[int]]) -> int:
    async with app.db.write() as s:
        n = await step(s)
    await asyncio.sleep(0)  # let senders and web requests take the lock between batches
    return n


@dataclass(frozen=True)
class Erasure:
    marker: str
    subscriptions: int
    deliveries: int


def _spellings(address: str) -> list[str]:
    """The forms an address may be stored in: as given, on the wire (an internationalized domain
    as its A-label), and as JSON writes either inside an event's details."""
    forms = {address, messages.wire_address(address)}
    return sorted(forms | {json.dumps(f)[1:-1] for f in forms})


async def erase_reader(app: bootstrap.App, address: str, now: datetime) -> Erasure:
    """Erase a reader's personal data on request, keeping only the hash that suppresses the address."""
    _, key = readers.normalize_address(address)
    async with app.db.write() as s:
        reader = await readers_store.subscriber_by_email(s, key)
        if reader is None:
            if await retention_store.erased_reader(s, key):
                raise UsageError(f"{address} was already erased")
            raise UsageError(f"no reader {address}")
        subs = await readers_store.subscriptions_of(s, reader.id)
        scrubbed = await retention_store.erase_subscriber(s, reader, now, _spellings(reader.email))
        await readers_store.add_event(s, "erased", now, subscriber_id=reader.id, method="operator")
        marker = retention_store.erased_email(key)
    log.info("reader %s erased on request", reader.id)
    return Erasure(marker, len(subs), scrubbed)
