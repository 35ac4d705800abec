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

from digest import messages, personal, rendering, same_story, schedule, selection, stories, tokens, views
from digest.bootstrap import App
from digest.errors import UsageError
from digest.models import (
    Cadence,
    DeliveryKind,
    DeliveryStatus,
    Edition,
    EditionStatus,
    MailingList,
    Topic,
    topic_choice_slugs,
)
from digest.readers import normalize_address, parsed_cron, reader_subscription
from digest.store import compose as compose_store
from digest.store import ledger
from digest.store import sources as sources_store
from digest.store import topics as topics_store

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
                section=d.sections.get(c.article.id, ""),
                also=d.also.get(c.article.id, ()),
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
    topics: str | None = None  # the topic choice it was drafted for (None: every topic)
    sections: Mapping[int, str] = field(default_factory=dict)  # article id → its topic heading
    also: Mapping[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # same story elsewhere
    found: int = 0  # new stories in the reader's topics, before min_articles and max_articles
    candidate_ids: tuple[int, ...] = ()  # every new story in the reader's topics ("and N more" too)

    @property
    def empty(self) -> bool:
        return not self.picked

    @property
    def identity(self) -> tuple[object, ...]:
        """What the edition shows, its "N more" page included: readers at other watermarks or with
        other topic choices whose draft is the same share one edition (and one render)."""
        return (
            self.candidate_ids,
            tuple(c.article.id for c in self.picked),
            self.more,
            tuple(sorted(self.sections.items())),
            tuple(sorted(self.also.items())),
        )


@dataclass(frozen=True)
class ListContext:
    """What every draft of one list in one tick shares, read once: source titles and topics."""

    titles: Mapping[str, str]
    topics: Sequence[Topic]


async def list_context(app: App, s: AsyncSession, lst: MailingList) -> ListContext:
    return ListContext(await stories.source_titles(app, s), await topics_store.list_topics(s, lst.id))


async def draft(
    app: App,
    s: AsyncSession,
    lst: MailingList,
    after_seq: int,
    upto_seq: int,
    now: datetime,
    topics: str | None = None,
    context: ListContext | None = None,
) -> Draft:
    since = now - timedelta(seconds=lst.max_age_seconds)
    chosen_topics = topic_choice_slugs(topics)
    context = context or await list_context(app, s, lst)
    found = await compose_store.new_articles_for_list(s, lst.id, after_seq, upto_seq, since, chosen_topics)
    candidates, also = _merge_same_stories(app, found, context.titles)
    chosen = selection.select_articles(candidates, lst.min_articles, lst.max_articles)
    picked, sections = await _under_headings(s, lst, chosen.chosen, chosen_topics, context.topics)
    return Draft(
        lst,
        after_seq,
        upto_seq,
        picked,
        chosen.more,
        since,
        context.titles,
        topics,
        sections,
        also,
        len(candidates),
        tuple(c.article.id for c in found),
    )


async def _under_headings(
    s: AsyncSession,
    lst: MailingList,
    picked: Sequence[compose_store.Candidate],
    chosen: Sequence[str] | None,
    offered: Sequence[Topic],
) -> tuple[tuple[compose_store.Candidate, ...], dict[int, str]]:
    """A reader with more than one topic sees stories grouped under topic headings, in the list's
    order of topics, each story once under its first matching topic the reader chose."""
    wanted = [t for t in offered if chosen is None or t.slug in chosen]
    if len(wanted) < 2 or not picked:
        return tuple(picked), {}
    matched = await topics_store.article_topic_slugs(s, lst.id, [c.article.id for c in picked])
    order = {t.slug: i for i, t in enumerate(wanted)}
    names = {t.slug: t.name for t in wanted}
    placed: list[tuple[int, int, compose_store.Candidate, str]] = []
    for n, c in enumerate(picked):
        slug = next((x for x in matched.get(c.article.id, []) if x in order), None)
        rank, heading = (order[slug], names[slug]) if slug else (len(order), OTHER_STORIES)
        placed.append((rank, n, c, heading))
    placed.sort(key=lambda p: (p[0], p[1]))
    return tuple(p[2] for p in placed), {p[2].article.id: p[3] for p in placed}


def _merge_same_stories(
    app: App, candidates: Sequence[compose_store.Candidate], titles: Mapping[str, str]
) -> tuple[list[compose_store.Candidate], dict[int, tuple[tuple[str, str], ...]]]:
    """One story once: near-duplicates from other sources fold into the earliest report, which
    says "Also reported by" with a link to each (newest first, as the digest lists stories)."""
    by_id = {c.article.id: c for c in candidates}
    groups = same_story.group_same_stories(
        [
            same_story.Candidate(
                c.article.id, c.source_name, c.article.title, c.article.summary, c.article.published_at
            )
            for c in candidates
        ]
    )
    folded = {other for g in groups for other in g.also}
    also = {
        g.primary: tuple(
            (
                stories.source_label(by_id[o].source_name, titles, by_id[o].article.url),
                _article_url(app, o, by_id[o].article.url),
            )
            for o in g.also
        )
        for g in groups
        if g.also
    }
    return [c for c in candidates if c.article.id not in folded], also


OTHER_STORIES = "Other stories"  # the heading for stories that match none of the list's topics


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
    # Readers whose watermark and topic choice draft the same digest share its edition.
    shared: dict[tuple[object, ...], int] = {}
    context: ListContext | None = None
    for watermark, members in sorted(groups.items()):
        drafts: dict[str | None, Draft] = {}
        async with app.db.read() as s:
            context = context or await list_context(app, s, lst)
            for choice in sorted({m.topics for m in members}, key=lambda c: c or ""):
                drafts[choice] = await draft(app, s, lst, watermark, upto, now, choice, context)
        for choice, d in drafts.items():
            if d.empty and not manual:
                # Nothing at all in their topics: their watermark moves past the other topics' stories.
                # Too few for min_articles: it stays, so the next slot has them too.
                moved = upto if d.found == 0 and choice is not None else watermark
                idle = [m for m in members if m.topics == choice]
                report.skipped += await _skip_slots(app, lst, watermark, moved, idle, now, choice)
        ready = {choice: d for choice, d in drafts.items() if not d.empty}
        sending = [m for m in members if m.topics in ready]
        suffix = f".{secrets.token_hex(6)}@{app.cfg.sender.domain}>"
        for start in range(0, len(sending), COMPOSE_CHUNK):
            chunk = sending[start : start + COMPOSE_CHUNK]
            async with app.db.write() as s:
                # One claim per schedule whatever the readers' topics; then one INSERT … SELECT
                # puts each reader in the edition of their choice.
                won: dict[str | None, list[int]] = defaultdict(list)
                for (expr, tz), ids in _by_schedule(chunk, lst).items():
                    nxt = schedule.next_due(parsed_cron(expr), ZoneInfo(tz), now)
                    claimed = await compose_store.advance_readers(
                        s, lst.id, ids, watermark, upto, nxt, now, None if manual else now, list(ready)
                    )
                    for sub_id, choice in claimed:
                        won[choice].append(sub_id)
                if not won:
                    continue  # a racing composer claimed them: no edition that no one gets
                editions: dict[str | None, int] = {}
                for choice in won:
                    d = ready[choice]
                    if d.identity not in shared:
                        # In the transaction that claimed its readers: an edition exists only with them.
                        shared[d.identity] = await _new_edition(app, s, d, now)
                        report.renders += 1
                        report.editions.append(shared[d.identity])
                    editions[choice] = shared[d.identity]
                ids = [i for group in won.values() for i in group]
                report.deliveries += await compose_store.insert_digest_deliveries(
                    s, editions, ids, watermark, upto, now, suffix
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
        topics=d.topics,
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
    app: App,
    lst: MailingList,
    watermark: int,
    moved: int,
    members: Sequence[compose_store.Slot],
    now: datetime,
    choice: str | None,
) -> int:
    """Readers whose slot came with nothing to send get a `skipped` event and their next slot;
    their watermark becomes `moved`."""
    skipped = 0
    async with app.db.write() as s:
        for (expr, tz), ids in _by_schedule(members, lst).items():
            nxt = schedule.next_due(parsed_cron(expr), ZoneInfo(tz), now)
            won = await compose_store.advance_readers(
                s, lst.id, ids, watermark, moved, nxt, now, now, [choice], sent=False
            )
            if won:
                await compose_store.record_skips(s, [i for i, _ in won], now, nxt)
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
    watermark, name, zone, choice = 0, "", lst.timezone, None
    if address:
        sub, reader = await reader_subscription(app, lst, address)
        watermark, name, zone, choice = sub.watermark, reader.name, sub.timezone or lst.timezone, sub.topics
    async with app.db.read() as s:
        upto = await compose_store.list_max_seq(s, lst.id)
        d = await draft(app, s, lst, watermark, upto, now, choice)
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
