"""Complaint rates (STANDARDS item 23): per edition and per sending day, after each complaint.

Per edition: complaints / its delivered messages. Per sending day: complaints about the digests
sent that UTC day / digests delivered that day. At the warning threshold a WARNING is logged and an
operator alert raised; at the pause threshold the edition (per edition) or every edition still
sending (per day) is paused and an `ALERT` is logged at CRITICAL. bounces.py calls this inside the
transaction that records the complaint.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from digest import bounce_rules
from digest.alerting import Alert, raise_alert
from digest.models import Delivery, EditionStatus
from digest.store import inbound as inbound_store
from digest.store import ledger
from digest.store import reports as reports_store

# The whole bounce pipeline logs under one name, the one operators filter and set levels by.
log = logging.getLogger("digest.bounces")


async def check_complaint_rates(
    s: AsyncSession, d: Delivery | None, now: datetime, warn: float, pause: float
) -> list[int]:
    """STANDARDS item 23: warn, or pause and alert, on the edition's and the sending day's rate;
    returns the editions it paused."""
    paused: list[int] = []
    if d is not None and d.edition_id is not None:
        complaints, delivered = await inbound_store.edition_complaint_counts(s, d.edition_id)
        rate = bounce_rules.complaint_rate(complaints, delivered)
        action = bounce_rules.complaint_action(rate, warn, pause)
        what = f"edition {d.edition_id}: {complaints} complaint(s) / {delivered} delivered = {rate:.3%}"
        if action == "pause":
            edition = await reports_store.edition_by_id(s, d.edition_id)
            if edition is not None and edition.status == EditionStatus.SENDING:
                reason = f"complaint rate {rate:.3%} reached {pause:.3%}"
                await ledger.pause_edition(s, d.edition_id, reason, now)
                paused.append(d.edition_id)
                _complaint_alert("complaint rate too high, edition paused", what, now)
            else:
                _complaint_alert("complaint rate too high (edition no longer sending)", what, now)
        elif action == "warn":
            _complaint_warning(f"complaint rate above {warn * 100:.3f}%: {what}", now)
    day = (d.sent_at if d is not None and d.sent_at is not None else now).astimezone(UTC)
    start = day.replace(hour=0, minute=0, second=0, microsecond=0)
    complaints, delivered = await inbound_store.sent_day_complaint_counts(s, start, start + timedelta(days=1))
    if complaints:
        rate = bounce_rules.complaint_rate(complaints, delivered)
        action = bounce_rules.complaint_action(rate, warn, pause)
        what = f"sent {start:%Y-%m-%d}: {complaints} complaint(s) / {delivered} delivered = {rate:.3%}"
        if action == "pause":
            editions = await inbound_store.sending_editions(s)
            for edition_id in editions:
                await ledger.pause_edition(s, edition_id, f"daily complaint rate {rate:.3%}", now)
                if edition_id not in paused:
                    paused.append(edition_id)
            done = f"paused editions {', '.join(map(str, editions))}" if editions else "no edition is sending"
            _complaint_alert(f"daily complaint rate too high ({done})", what, now)
        elif action == "warn":
            _complaint_warning(f"daily complaint rate above {warn * 100:.3f}%: {what}", now)
    return paused


def _complaint_alert(title: str, what: str, now: datetime) -> None:
    log.critical("ALERT: %s: %s", title, what)
    raise_alert(Alert("complaint_rate", title, f"{title}: {what}", now))


def _complaint_warning(message: str, now: datetime) -> None:
    log.warning("%s", message)
    raise_alert(Alert("complaint_warning", "complaint rate above the warning threshold", message, now))
