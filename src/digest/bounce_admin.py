"""What operators see and undo after bounces: the report by class, reason and domain, lifting a
suppression.

`digest bounces report` and `digest subscribers unsuppress`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from digest import bootstrap, readers
from digest.errors import UsageError
from digest.models import INBOUND_EVENTS, SubscriberStatus
from digest.store import inbound as inbound_store
from digest.store import readers as readers_store

# The whole bounce pipeline logs under one name, the one operators filter and set levels by.
log = logging.getLogger("digest.bounces")


async def unsuppress(app: bootstrap.App, email: str, reason: str, now: datetime) -> str:
    """Lift a reader's suppression with the operator's reason; returns the status they had."""
    reason = " ".join(reason.split())
    if not reason:
        raise UsageError("say why with --reason: it is recorded with the reader")
    _, key = readers.normalize_address(email)
    async with app.db.write() as s:
        reader = await readers_store.subscriber_by_email(s, key)
        if reader is None:
            raise UsageError(f"no reader {email}")
        before = reader.status
        if before == SubscriberStatus.ACTIVE:
            raise UsageError(f"{email} is not suppressed (status active)")
        await inbound_store.lift_suppression(s, reader.id, now)
        await readers_store.add_event(
            s, "unsuppressed", now, subscriber_id=reader.id, previous=before, reason=reason[:500]
        )
    log.info("reader %s unsuppressed (was %s): %s", reader.id, before, reason)
    return before


@dataclass(frozen=True)
class BounceReport:
    """Inbound events since a time, by class, by class and reason, and by recipient domain."""

    since: datetime
    by_class: dict[str, int]
    by_domain: dict[str, dict[str, int]]
    by_reason: dict[tuple[str, str], int]  # (class, reason): why bounces were classed as they were

    @property
    def total(self) -> int:
        return sum(self.by_class.values())


def _class_of(kind: str, detail: dict[str, Any]) -> str:
    if kind == "complained":
        return "complaint"
    if kind == "policy_rejection":
        return "policy"
    if kind == "delivery_delayed":
        return "delayed"
    if kind == "bounce_unparsed":
        return "unparsed"
    return str(detail.get("bounce_class") or "unknown")


def _reason_of(kind: str, detail: dict[str, Any]) -> str:
    """The reason an event names: the classification's for DSNs, the reply's start at SMTP time."""
    if detail.get("bounce_reason"):
        return str(detail["bounce_reason"])
    if detail.get("at") == "smtp" and detail.get("reply"):
        return f"SMTP reply: {str(detail['reply'])[:60]}"
    return str(detail.get("reason") or kind)[:80]


async def report(app: bootstrap.App, since: datetime) -> BounceReport:
    """Counts of bounces (DSN and SMTP time), delays and complaints since a time."""
    async with app.db.read() as s:
        rows = await inbound_store.inbound_events_since(s, INBOUND_EVENTS, since)
    by_class: Counter[str] = Counter()
    by_reason: Counter[tuple[str, str]] = Counter()
    by_domain: dict[str, Counter[str]] = {}
    for kind, detail, address, reader in rows:
        klass = _class_of(kind, detail)
        domain = (address or reader or "?").rpartition("@")[2].lower() or "?"
        by_class[klass] += 1
        by_reason[(klass, _reason_of(kind, detail))] += 1
        by_domain.setdefault(domain, Counter())[klass] += 1
    return BounceReport(
        since,
        dict(by_class.most_common()),
        {d: dict(c) for d, c in sorted(by_domain.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))},
        dict(by_reason.most_common()),
    )
