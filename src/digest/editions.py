"""Editions control for operators: pause, resume, cancel and resend."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from digest.bootstrap import App, utcnow
from digest.errors import UsageError
from digest.models import (
    Edition,
    EditionStatus,
)
from digest.store import ledger
from digest.store import reports as reports_store


async def _edition(s: AsyncSession, edition_id: int) -> Edition:
    found = await reports_store.edition_by_id(s, edition_id)
    if found is None:
        raise UsageError(f"no edition {edition_id} (see `digest status`)")
    return found


async def pause_edition(app: App, edition_id: int, reason: str) -> None:
    """Stop sending an edition; what is in flight finishes, the rest waits for resume."""
    async with app.db.write() as s:
        e = await _edition(s, edition_id)
        if e.status in (EditionStatus.DONE, EditionStatus.CANCELLED):
            raise UsageError(f"edition {edition_id} is {e.status}: nothing to pause")
        await ledger.set_edition_status(s, edition_id, EditionStatus.PAUSED, reason, utcnow())


async def resume_edition(app: App, edition_id: int, now: datetime) -> None:
    async with app.db.write() as s:
        e = await _edition(s, edition_id)
        if e.status != EditionStatus.PAUSED:
            raise UsageError(f"edition {edition_id} is {e.status}, not paused")
        await ledger.set_edition_status(s, edition_id, EditionStatus.SENDING, None, now)


async def cancel_edition(app: App, edition_id: int, now: datetime) -> int:
    """Cancel what has not gone out; those readers get these articles in their next digest."""
    async with app.db.write() as s:
        await _edition(s, edition_id)
        cancelled = await ledger.cancel_edition(s, edition_id, now)
        for d in cancelled:
            if d.subscription_id is not None and d.from_seq is not None and d.to_seq is not None:
                await ledger.rollback_watermark(s, d.subscription_id, d.from_seq, d.to_seq)
    return len(cancelled)


async def resend_edition(app: App, edition_id: int, include_unknown: bool, now: datetime) -> int:
    async with app.db.write() as s:
        await _edition(s, edition_id)
        return await ledger.requeue_unsent(s, edition_id, include_unknown, now)
