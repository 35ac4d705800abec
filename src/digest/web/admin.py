"""The admin page: a read-only operator overview, gathered in one place by `admin_overview`.

The page takes the `[api] token` as a bearer header, or as ?token= so that a browser can open it.
"""

from __future__ import annotations

import dataclasses
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from digest import bootstrap
from digest.store import reports as reports_store
from digest.store import sources as sources_store
from digest.web.deps import DigestApp, Now
from digest.web.render import message, page

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class ListReaders:
    slug: str
    name: str
    readers: dict[str, int]  # subscriptions by status


@dataclass(frozen=True)
class EditionRow:
    id: int
    list: str
    created_at: datetime
    status: str
    subject: str
    counts: dict[str, int]  # deliveries by status
    pause_reason: str | None


@dataclass(frozen=True)
class HourCount:
    label: str
    count: int
    percent: int  # of the busiest hour, for the bar's height


@dataclass(frozen=True)
class ReaderEvent:
    at: datetime
    kind: str
    address: str
    detail: str


@dataclass(frozen=True)
class AdminOverview:
    now: datetime
    lists: list[ListReaders]
    editions: list[EditionRow]
    hours: list[HourCount]
    sent_total: int
    events: list[ReaderEvent]
    queue_depth: int
    queue_age: timedelta | None
    sent_last_minute: int


def _token_ok(request: Request, expected: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = request.query_params.get("token", "")
    return hmac.compare_digest(given.strip().encode(), expected.encode())


@router.get("/admin", response_class=HTMLResponse)
async def admin(request: Request, app: DigestApp, now: Now) -> HTMLResponse:
    """Read-only operator overview: lists, recent editions, sends per hour, bounces, unsubscribes."""
    if not app.cfg.api.token:
        return message(request, "Admin is off", "Set [api] token in the config to use this page.", status=403)
    if not _token_ok(request, app.cfg.api.token):
        return message(request, "Not authorized", "Send Authorization: Bearer <the [api] token>.", status=401)
    overview = await admin_overview(app, now)
    response = page(request, "admin.html", title="digest: operator overview", **dataclasses.asdict(overview))
    response.headers["referrer-policy"] = "no-referrer"  # the URL may carry the token
    return response


async def admin_overview(app: bootstrap.App, now: datetime, hours: int = 24) -> AdminOverview:
    """What the admin page shows, read in one transaction."""
    async with app.db.read() as s:
        lists = list(await sources_store.active_lists(s))
        readers = await reports_store.list_reader_counts(s, None)
        editions = await reports_store.edition_counts(s, None, limit=15)
        sent_times = await reports_store.sent_times_since(s, now - timedelta(hours=hours))
        events = await reports_store.recent_reader_events(s, ["bounced", "complained", "unsubscribed"], 20)
        depth, oldest = await reports_store.queue_summary(s, now)
        sent_last_minute = await reports_store.sent_since(s, now - timedelta(minutes=1))
    per_list: dict[str, dict[str, int]] = {lst.slug: {} for lst in lists}
    for slug, status, _, n in readers:
        if slug in per_list:
            per_list[slug][status] = per_list[slug].get(status, 0) + n
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    buckets = [0] * hours
    for t in sent_times:
        i = int((t - start).total_seconds() // 3600)
        if 0 <= i < hours:
            buckets[i] += 1
    peak = max(buckets) or 1
    return AdminOverview(
        now=now,
        lists=[ListReaders(lst.slug, lst.name, per_list[lst.slug]) for lst in lists],
        editions=[
            EditionRow(e.id, slug, e.created_at, e.status, e.subject, counts, e.pause_reason)
            for e, slug, counts in editions
        ],
        hours=[
            HourCount(f"{start + timedelta(hours=i):%H}:00", n, round(100 * n / peak))
            for i, n in enumerate(buckets)
        ],
        sent_total=sum(buckets),
        events=[
            ReaderEvent(
                at=t,
                kind=k,
                address=a or "-",
                detail=str(d.get("bounce_class") or d.get("method") or d.get("reply") or "")[:120],
            )
            for t, k, d, a in events
        ],
        queue_depth=depth,
        queue_age=(now - oldest) if oldest else None,
        sent_last_minute=sent_last_minute,
    )
