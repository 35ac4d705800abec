"""Compose: the one place a draft becomes an edition, for digests and test sends alike.

Set-based and exactly once: readers at one watermark share one edition, rendered once, and each
chunk of them is claimed with a compare-and-set on watermark and slot.
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from digest import messages, personal, rendering, schedule, selection, stories, tokens, views
from digest.bootstrap import App
from digest.errors import UsageError
from digest.models import (
    Cadence,
    DeliveryKind,
    DeliveryStatus,
    Edition,
    EditionStatus,
    MailingList,
)
from digest.readers import normalize_address, parsed_cron, reader_subscription
from digest.store import compose as compose_store
from digest.store import ledger
from digest.store import sources as sources_store

log = logging.getLogger("digest")


def _article_url(app: App, article_id: int, url: str | None) -> str:
    return url or f"{app.base_url}/articles/{article_id}"


def edition_view(app: App, d: Draft, now: datetime, web_url: str, more_url: str = "") -> views.EditionView:
    b, lst = app.cfg.branding, d.lst
    contact = (
        lst.reply_to or app.cfg.sender.reply_to or messages.address_of(lst.from_addr or app.cfg.sender.from_)
    )
    return views.EditionView(
        list_slug=lst.slug,
        list_name=lst.name,
        list_description=lst.description,
        language=lst.language,
        direction="rtl" if lst.language.split("-")[0] in {"ar", "he", "fa", "ur", "yi", "ps"} else "ltr",
        edition_date=now.astimezone(ZoneInfo(lst.timezone)).date(),
        articles=[
            views.ArticleView(
                title=c.article.title,
                url=_article_url(app, c.article.id, c.article.url),
                source=stories.source_label(c.source_name, d.titles, c.article.url),
                published_at=c.article.published_at,
                summary=c.article.summary,
                image_url=c.article.image_url,
                author=c.article.author,
            )
            for c in d.picked
        ],
        more_count=d.more,
        archive_url=f"{app.base_url}/archive/{lst.slug}",
        web_url=web_url,
        base_url=app.base_url,
        postal_address=app.cfg.sender.postal_address,
        contact=contact,
        branding=views.Branding(accent=b.accent, logo_url=b.logo_url, footer_text=b.footer_text),
        more_url=more_url,
        composed_at=now,
    )


@dataclass(frozen=True)
class Draft:
    """A digest that would go to readers at one watermark, not yet stored."""

    lst: MailingList
    after_seq: int
    upto_seq: int
    picked: tuple[compose_store.Candidate, ...]
    more: int
    since: datetime  # stories published before this are too old for the list (max_age)
    titles: Mapping[str, str]  # source name → the title readers see

    @property
    def empty(self) -> bool:
        return not self.picked


async def draft(
    app: App, s: AsyncSession, lst: MailingList, after_seq: int, upto_seq: int, now: datetime
) -> Draft:
    since = now - timedelta(seconds=lst.max_age_seconds)
    candidates = await compose_store.new_articles_for_list(s, lst.id, after_seq, upto_seq, since)
    chosen = selection.select_articles(candidates, lst.min_articles, lst.max_articles)
    titles = await stories.source_titles(app, s)
    return Draft(lst, after_seq, upto_seq, chosen.chosen, chosen.more, since, titles)


def render_draft(app: App, d: Draft, now: datetime, web_url: str, more_url: str = "") -> views.Rendered:
    return rendering.render_edition(app.templates, edition_view(app, d, now, web_url, more_url))


def stories_url(app: App, d: Draft, edition_id: int) -> str:
    """The page listing every new story of an edition, those "and N more" counted included."""
    signed = tokens.stories_range(app.keys[0], edition_id, d.after_seq, d.upto_seq, int(d.since.timestamp()))
    return f"{app.base_url}/archive/{d.lst.slug}/{edition_id}/stories?r={signed}"


@dataclass
class ComposeReport:
    list_slug: str
    editions: list[int] = field(default_factory=list)
    deliveries: int = 0
    skipped: int = 0
    renders: int = 0
    moved: int = 0  # readers whose missed slot (older than catch_up) moved to their next slot


COMPOSE_CHUNK = 2000  # readers per transaction: short locks, bounded memory


async def compose(app: App, lst: MailingList, now: datetime, *, manual: bool) -> ComposeReport:
    """Compose digests for a list's readers, exactly once per reader and watermark.

    `manual` (digest send): every confirmed reader with something new, whatever their slot; their
    next slot is then computed from now. Otherwise only readers whose slot has come; a reader with
    nothing new gets a `skipped` event and their next slot. Readers at one watermark share one
    edition, rendered once; each chunk of them is claimed (compare-and-set on watermark and slot)
    and given its deliveries by set-based SQL in one transaction.
    """
    report = ComposeReport(lst.slug)
    async with app.db.read() as s:
        upto = await compose_store.list_max_seq(s, lst.id)
        due = await compose_store.due_readers(s, lst.id, None if manual else now)
    if not manual:
        kept = await _drop_stale_slots(app, lst, due, now)
        report.moved = len(due) - len(kept)
        due = kept
    groups: dict[int, list[compose_store.Slot]] = defaultdict(list)
    for slot in due:
        groups[slot.watermark].append(slot)
    del due
    for watermark, members in sorted(groups.items()):
        async with app.db.read() as s:
            d = await draft(app, s, lst, watermark, upto, now)
        if d.empty:
            if not manual:
                report.skipped += await _skip_slots(app, lst, watermark, members, now)
            continue
        edition_id: int | None = None
        suffix = f".{secrets.token_hex(6)}@{app.cfg.sender.domain}>"
        for start in range(0, len(members), COMPOSE_CHUNK):
            chunk = members[start : start + COMPOSE_CHUNK]
            async with app.db.write() as s:
                if edition_id is None:
                    edition_id = await _new_edition(app, s, d, now)
                    report.renders += 1
                    report.editions.append(edition_id)
                for (expr, tz), ids in _by_schedule(chunk, lst).items():
                    nxt = schedule.next_due(parsed_cron(expr), ZoneInfo(tz), now)
                    won = await compose_store.advance_readers(
                        s, lst.id, ids, watermark, upto, nxt, now, None if manual else now
                    )
                    if won:
                        report.deliveries += await compose_store.insert_digest_deliveries(
                            s, edition_id, won, watermark, upto, now, suffix
                        )
    return report


async def _drop_stale_slots(
    app: App, lst: MailingList, due: list[compose_store.Slot], now: datetime
) -> list[compose_store.Slot]:
    """Slots missed by more than `[scheduler] catch_up` (the service was down) are not sent late:
    those readers wait for their next slot. Within catch_up, the one missed slot is sent now."""
    horizon = now - app.cfg.scheduler.catch_up
    stale = [s for s in due if s.next_due_at is not None and s.next_due_at < horizon]
    if not stale:
        return due
    by_watermark: dict[int, list[compose_store.Slot]] = defaultdict(list)
    for slot in stale:
        by_watermark[slot.watermark].append(slot)
    async with app.db.write() as s:
        for watermark, slots in by_watermark.items():
            for (expr, tz), ids in _by_schedule(slots, lst).items():
                nxt = schedule.next_due(parsed_cron(expr), ZoneInfo(tz), now)
                await compose_store.advance_readers(s, lst.id, ids, watermark, watermark, nxt, now, horizon)
    log.info(
        "list %s: %d reader(s) missed a slot by more than %s; next slot instead",
        lst.slug,
        len(stale),
        app.cfg.scheduler.catch_up,
    )
    gone = {slot.id for slot in stale}
    return [slot for slot in due if slot.id not in gone]


def _by_schedule(slots: Sequence[compose_store.Slot], lst: MailingList) -> dict[tuple[str, str], list[int]]:
    """Readers grouped by (cron, time zone): due times are computed once per group, not per reader."""
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for slot in slots:
        expr = schedule.cadence_cron(slot.cadence, slot.send_hour, slot.weekday, lst.schedule)
        tz = lst.timezone if slot.cadence == Cadence.DEFAULT or not slot.timezone else slot.timezone
        out[(expr, tz)].append(slot.id)
    return out


async def _new_edition(
    app: App, s: AsyncSession, d: Draft, now: datetime, kind: DeliveryKind = DeliveryKind.DIGEST
) -> int:
    """Store and render one edition (the one place a draft becomes an edition)."""
    edition = Edition(
        list_id=d.lst.id,
        kind=kind,
        article_ids=[c.article.id for c in d.picked],
        more_count=d.more,
        subject="",
        html="",
        text="",
        created_at=now,
        status=EditionStatus.SENDING,
    )
    await ledger.add_edition(s, edition)
    web_url = f"{app.base_url}/archive/{d.lst.slug}/{edition.id}"
    if kind == DeliveryKind.TEST:
        web_url += f"?t={tokens.draft_copy_signature(app.keys[0], edition.id)}"
    rendered = render_draft(app, d, now, web_url, stories_url(app, d, edition.id))
    subject = f"[Test] {rendered.subject}" if kind == DeliveryKind.TEST else rendered.subject
    await ledger.set_edition_body(s, edition, subject, rendered.html, rendered.text)
    return edition.id


async def _skip_slots(
    app: App, lst: MailingList, watermark: int, members: Sequence[compose_store.Slot], now: datetime
) -> int:
    skipped = 0
    async with app.db.write() as s:
        for (expr, tz), ids in _by_schedule(members, lst).items():
            nxt = schedule.next_due(parsed_cron(expr), ZoneInfo(tz), now)
            won = await compose_store.advance_readers(s, lst.id, ids, watermark, watermark, nxt, now, now)
            if won:
                await compose_store.record_skips(s, won, now, nxt)
                skipped += len(won)
    return skipped


async def compose_due(app: App, now: datetime) -> list[ComposeReport]:
    """One scheduler pass: compose for every reader whose slot has come."""
    async with app.db.read() as s:
        lists = await sources_store.active_lists(s)
    return [await compose(app, lst, now, manual=False) for lst in lists]


async def preview(
    app: App, lst: MailingList, now: datetime, address: str | None = None
) -> tuple[Draft, views.Rendered]:
    """Exactly the digest a reader (or a new reader) would get next; changes nothing."""
    watermark, name, zone = 0, "", lst.timezone
    if address:
        sub, reader = await reader_subscription(app, lst, address)
        watermark, name, zone = sub.watermark, reader.name, sub.timezone or lst.timezone
    async with app.db.read() as s:
        upto = await compose_store.list_max_seq(s, lst.id)
        d = await draft(app, s, lst, watermark, upto, now)
    if d.empty:
        return d, views.Rendered("", "", "")
    rendered = render_draft(app, d, now, f"{app.base_url}/archive/{lst.slug}")
    text, html = personal.for_reader(rendered.text, rendered.html, name=name, zone=zone)
    return d, views.Rendered(rendered.subject, html, text)


async def queue_test(app: App, lst: MailingList, address: str, now: datetime) -> int:
    """Queue the digest a new reader would get, to any address, as a test: moves no watermark."""
    to, _ = normalize_address(address)
    async with app.db.read() as s:
        upto = await compose_store.list_max_seq(s, lst.id)
        d = await draft(app, s, lst, 0, upto, now)
    if d.empty:
        raise UsageError(
            f"list {lst.slug} has no articles to put in a test digest (run `digest ingest` first)"
        )
    async with app.db.write() as s:
        edition_id = await _new_edition(app, s, d, now, DeliveryKind.TEST)
        new_id = await compose_store.insert_delivery(
            s,
            {
                "kind": DeliveryKind.TEST,
                "edition_id": edition_id,
                "subscription_id": None,
                "address": to,
                "priority": 5,
                "status": DeliveryStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "message_id": messages.new_message_id(app.cfg.sender.domain),
                "created_at": now,
                "updated_at": now,
            },
        )
    assert new_id is not None
    return new_id
