"""Where the pure core meets the edges: ingest, compose, deliver, and the reader operations.

Every function takes `now` (or a clock) from its caller, so the CLI's `tick --once --now` and the
tests drive time explicitly.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.ext.asyncio import AsyncSession

from digest import delivery, ingest, messages, rendering, schedule, selection, store, tokens
from digest.config import Config, ListConfig
from digest.errors import AddressError, SourceError, UsageError
from digest.models import (
    Cadence,
    DeliveryKind,
    DeliveryStatus,
    Edition,
    EditionStatus,
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)
from digest.store import compose as compose_store
from digest.store import ledger, migrate, readers, retention
from digest.store import reports as reports_store
from digest.store import sources as sources_store

log = logging.getLogger("digest")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    """What every operation needs: the config, the database, templates and signing keys."""

    cfg: Config
    db: store.Database
    templates: rendering.Templates
    keys: list[str]

    @property
    def base_url(self) -> str:
        return self.cfg.web.base_url


def resolve_path(cfg: Config, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (cfg.base_dir / p)


def templates_dir(cfg: Config) -> Path:
    return (
        resolve_path(cfg, cfg.templates.directory)
        if cfg.templates.directory
        else rendering.default_templates_dir()
    )


def open_database(cfg: Config) -> store.Database:
    return store.Database(store.resolve_url(cfg.database.url, cfg.base_dir))


async def open_app(cfg: Config, *, check: bool = True) -> App:
    """Connect, refuse an outdated schema, sync sources and lists from the config, load templates."""
    templates = rendering.Templates(templates_dir(cfg))
    database = open_database(cfg)
    try:
        if check:
            await migrate.check_schema(database)
        async with database.write() as s:
            await sync_config(s, cfg)
            keys = list(cfg.web.keys) or [await store.get_or_create_setting(s, "secret_key")]
    except BaseException:
        await database.close()
        raise
    return App(cfg=cfg, db=database, templates=templates, keys=keys)


async def sync_config(s: AsyncSession, cfg: Config) -> None:
    await sources_store.lock_config_sync(s)
    ids: dict[str, int] = {}
    for src in cfg.sources:
        location = src.location
        if src.kind == "directory" or (src.kind == "feed" and not src.url):
            location = str(resolve_path(cfg, location))
        row = await sources_store.upsert_source(s, src.name, src.kind, location, src.interval)
        ids[src.name] = row.id
    for lst in cfg.lists:
        await sources_store.upsert_list(s, lst.slug, _list_values(lst), [ids[n] for n in lst.sources])
    await sources_store.deactivate_lists_except(s, [lst.slug for lst in cfg.lists])


def _list_values(lst: ListConfig) -> dict[str, object]:
    return {
        "name": lst.name,
        "description": lst.description,
        "schedule": lst.schedule,
        "timezone": lst.timezone,
        "min_articles": lst.min_articles,
        "max_articles": lst.max_articles,
        "max_age_seconds": int(lst.max_age.total_seconds()),
        "template": lst.template,
        "from_addr": lst.from_,
        "reply_to": lst.reply_to,
        "public": lst.public,
        "language": lst.language,
    }


async def get_list(app: App, slug: str) -> MailingList:
    async with app.db.read() as s:
        lst = await sources_store.list_by_slug(s, slug)
    if lst is None or not lst.active:
        known = ", ".join(x.slug for x in app.cfg.lists) or "none"
        raise UsageError(f"no list {slug!r} (configured lists: {known})")
    return lst


# ---------------------------------------------------------------- ingest


@dataclass(frozen=True)
class IngestReport:
    source: str
    new: int
    seen: int
    not_modified: bool = False
    error: str | None = None
    warnings: tuple[str, ...] = ()


async def ingest_sources(
    app: App, now: datetime, only: str | None = None, *, due_only: bool = False
) -> list[IngestReport]:
    """Fetch every feed and directory source (or one); a broken source is reported, the rest go on.

    `due_only` (the scheduler's jobs): skip a source fetched less than its interval ago, by this or
    another scheduler process, so several schedulers fetch each feed once per interval.
    """
    async with app.db.read() as s:
        sources = [
            src for src in await sources_store.all_sources(s) if src.name in {c.name for c in app.cfg.sources}
        ]
    if only is not None:
        sources = [src for src in sources if src.name == only]
        if not sources:
            raise UsageError(f"no source {only!r} (configured: {', '.join(c.name for c in app.cfg.sources)})")
    if due_only:
        # 10% slack: APScheduler's own interval must not be skipped for a few milliseconds of drift.
        sources = [
            src
            for src in sources
            if src.last_fetched_at is None
            or now - src.last_fetched_at >= timedelta(seconds=src.interval_seconds * 0.9)
        ]
    reports = []
    for src in sources:
        if src.kind == "api":
            continue
        reports.append(
            await ingest_one(app, src.id, src.name, src.kind, src.location, src.etag, src.last_modified, now)
        )
    return reports


async def ingest_one(
    app: App,
    source_id: int,
    name: str,
    kind: str,
    location: str,
    etag: str | None,
    last_modified: str | None,
    now: datetime,
) -> IngestReport:
    try:
        result = await ingest.fetch_source(
            name, kind, location, now=now, etag=etag, last_modified=last_modified
        )
    except SourceError as exc:
        async with app.db.write() as s:
            await sources_store.record_fetch(s, source_id, now, error=str(exc))
        log.warning("ingest failed: %s", exc)
        return IngestReport(name, 0, 0, error=str(exc))
    items = result.articles
    async with app.db.write() as s:
        new = await sources_store.store_articles(s, source_id, items, now) if items else 0
        await sources_store.record_fetch(
            s,
            source_id,
            now,
            error=None,
            etag=result.etag,
            last_modified=result.last_modified,
            keep_validators=result.not_modified,
        )
    return IngestReport(name, new, len(items) - new, result.not_modified, None, tuple(result.warnings))


# ---------------------------------------------------------------- readers


def normalize_address(address: str) -> tuple[str, str]:
    """(address as stored, lookup key); AddressError says what is wrong with it."""
    raw = address.strip()
    if not raw:
        raise AddressError("the email address is empty")
    if any(c in raw for c in "\r\n,\x00") or len(raw) > 254:
        raise AddressError(f"{raw[:60]!r} is not a single email address")
    try:
        normalized = validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise AddressError(f"{raw[:60]!r} is not a valid email address: {exc}") from None
    return normalized, normalized.casefold()


@lru_cache(maxsize=4096)
def _cron(expr: str) -> schedule.Cron:
    return schedule.parse_cron(expr)


def reader_schedule(sub: Subscription, lst: MailingList) -> tuple[str, str]:
    """(cron expression, time zone) of one reader's slots."""
    expr = schedule.cadence_cron(sub.cadence, sub.send_hour, sub.weekday, lst.schedule)
    tz = lst.timezone if sub.cadence == Cadence.DEFAULT or not sub.timezone else sub.timezone
    return expr, tz


def next_slot(sub: Subscription, lst: MailingList, after: datetime) -> datetime:
    expr, tz = reader_schedule(sub, lst)
    return schedule.next_due(_cron(expr), ZoneInfo(tz), after)


@dataclass(frozen=True)
class ReaderPrefs:
    name: str = ""
    cadence: str = Cadence.DEFAULT
    weekday: int | None = None
    send_hour: int | None = None
    timezone: str | None = None


def validate_prefs(prefs: ReaderPrefs) -> ReaderPrefs:
    if prefs.cadence not in {c.value for c in Cadence}:
        raise UsageError(f"cadence must be default, daily or weekly, not {prefs.cadence!r}")
    if prefs.send_hour is not None and not 0 <= prefs.send_hour <= 23:
        raise UsageError(f"send hour must be 0-23, not {prefs.send_hour}")
    if prefs.weekday is not None and not 0 <= prefs.weekday <= 6:
        raise UsageError("weekday must be one of mon, tue, wed, thu, fri, sat, sun")
    if prefs.cadence != Cadence.DEFAULT and prefs.send_hour is None:
        raise UsageError(f"cadence {prefs.cadence} needs a send hour (--hour)")
    if prefs.cadence == Cadence.WEEKLY and prefs.weekday is None:
        raise UsageError("cadence weekly needs a weekday (--weekday)")
    if prefs.timezone:
        try:
            ZoneInfo(prefs.timezone)
        except (KeyError, ValueError):
            raise UsageError(
                f"unknown time zone {prefs.timezone!r} (use an IANA name such as Europe/Berlin)"
            ) from None
    return prefs


@dataclass(frozen=True)
class Consent:
    ip: str | None = None
    user_agent: str | None = None
    source: str | None = None
    referer: str | None = None
    text_version: str | None = None


@dataclass(frozen=True)
class AddResult:
    subscription_id: int
    created: bool
    changed: bool


async def add_subscription(
    s: AsyncSession,
    lst: MailingList,
    address: str,
    prefs: ReaderPrefs,
    *,
    confirmed: bool,
    now: datetime,
    consent: Consent = Consent(),
    method: str = "operator",
) -> AddResult:
    """Subscribe one reader to one list (idempotent: an existing subscription is left as it is,
    except that `confirmed` confirms a pending one)."""
    email, key = normalize_address(address)
    prefs = validate_prefs(prefs)
    # An address erased on the reader's request comes back only through the reader (double opt-in).
    if (
        method in ("operator", "import", "api")
        and await readers.subscriber_by_email(s, key) is None
        and await retention.erased_reader(s, key)
    ):
        raise AddressError(f"{email} was erased on request: only the reader can subscribe again")
    subscriber, _ = await readers.get_or_create_subscriber(s, email, key, prefs.name, now)
    sub = await readers.subscription_for(s, subscriber.id, lst.id)
    if sub is not None and sub.status != SubscriptionStatus.UNSUBSCRIBED:
        if confirmed and sub.status == SubscriptionStatus.PENDING:
            sub.status, sub.confirmed_at = SubscriptionStatus.CONFIRMED, now
            sub.next_due_at = next_slot(sub, lst, now)
            await readers.add_event(
                s, "confirmed", now, subscriber_id=subscriber.id, subscription_id=sub.id, method=method
            )
            return AddResult(sub.id, False, True)
        return AddResult(sub.id, False, False)
    created = sub is None
    if sub is None:
        sub = Subscription(
            subscriber_id=subscriber.id, list_id=lst.id, token=tokens.new_subscription_token(), watermark=0
        )
        s.add(sub)
    sub.status = SubscriptionStatus.CONFIRMED if confirmed else SubscriptionStatus.PENDING
    sub.cadence, sub.weekday, sub.send_hour, sub.timezone = (
        prefs.cadence,
        prefs.weekday,
        prefs.send_hour,
        prefs.timezone,
    )
    sub.signup_at = now
    sub.signup_ip, sub.signup_user_agent = consent.ip, consent.user_agent
    sub.signup_source, sub.signup_referer, sub.consent_text_version = (
        consent.source,
        consent.referer,
        consent.text_version,
    )
    sub.unsubscribed_at = sub.unsubscribe_method = None
    sub.confirmed_at = now if confirmed else None
    sub.next_due_at = next_slot(sub, lst, now) if confirmed else None
    if prefs.name and not subscriber.name:
        subscriber.name = prefs.name
    await s.flush()
    await readers.add_event(
        s,
        "subscribed",
        now,
        subscriber_id=subscriber.id,
        subscription_id=sub.id,
        list=lst.slug,
        method=method,
        ip=consent.ip,
        source=consent.source,
    )
    if confirmed:
        await readers.add_event(
            s, "confirmed", now, subscriber_id=subscriber.id, subscription_id=sub.id, method=method
        )
    return AddResult(sub.id, created, True)


async def unsubscribe(s: AsyncSession, sub: Subscription, method: str, now: datetime) -> bool:
    """Leave a list at once: outstanding deliveries to this reader are skipped. Idempotent."""
    if sub.status == SubscriptionStatus.UNSUBSCRIBED:
        return False
    sub.status, sub.unsubscribed_at, sub.unsubscribe_method, sub.next_due_at = (
        SubscriptionStatus.UNSUBSCRIBED,
        now,
        method,
        None,
    )
    await ledger.skip_outstanding(s, sub.id, now, "reader unsubscribed")
    await readers.add_event(
        s, "unsubscribed", now, subscriber_id=sub.subscriber_id, subscription_id=sub.id, method=method
    )
    return True


# ---------------------------------------------------------------- compose


def _article_url(app: App, article_id: int, url: str | None) -> str:
    return url or f"{app.base_url}/articles/{article_id}"


def edition_view(
    app: App,
    lst: MailingList,
    picked: Sequence[compose_store.Candidate],
    more: int,
    now: datetime,
    web_url: str,
) -> rendering.EditionView:
    b = app.cfg.branding
    contact = (
        lst.reply_to or app.cfg.sender.reply_to or messages.address_of(lst.from_addr or app.cfg.sender.from_)
    )
    return rendering.EditionView(
        list_slug=lst.slug,
        list_name=lst.name,
        list_description=lst.description,
        language=lst.language,
        direction="rtl" if lst.language.split("-")[0] in {"ar", "he", "fa", "ur", "yi", "ps"} else "ltr",
        edition_date=now.astimezone(ZoneInfo(lst.timezone)).date(),
        articles=[
            rendering.ArticleView(
                title=c.article.title,
                url=_article_url(app, c.article.id, c.article.url),
                source=c.source_name,
                published_at=c.article.published_at,
                summary=c.article.summary,
                image_url=c.article.image_url,
            )
            for c in picked
        ],
        more_count=more,
        archive_url=f"{app.base_url}/archive/{lst.slug}",
        web_url=web_url,
        base_url=app.base_url,
        postal_address=app.cfg.sender.postal_address,
        contact=contact,
        branding=rendering.Branding(accent=b.accent, logo_url=b.logo_url, footer_text=b.footer_text),
    )


@dataclass(frozen=True)
class Draft:
    """A digest that would go to readers at one watermark, not yet stored."""

    lst: MailingList
    after_seq: int
    upto_seq: int
    picked: tuple[compose_store.Candidate, ...]
    more: int

    @property
    def empty(self) -> bool:
        return not self.picked


async def draft(
    app: App, s: AsyncSession, lst: MailingList, after_seq: int, upto_seq: int, now: datetime
) -> Draft:
    since = now - timedelta(seconds=lst.max_age_seconds)
    candidates = await compose_store.new_articles_for_list(s, lst.id, after_seq, upto_seq, since)
    chosen = selection.select_articles(candidates, lst.min_articles, lst.max_articles)
    return Draft(lst, after_seq, upto_seq, chosen.chosen, chosen.more)


def render_draft(app: App, d: Draft, now: datetime, web_url: str) -> rendering.Rendered:
    return rendering.render_edition(app.templates, edition_view(app, d.lst, d.picked, d.more, now, web_url))


@dataclass
class ComposeReport:
    list_slug: str
    editions: list[int] = field(default_factory=list)
    deliveries: int = 0
    skipped: int = 0
    renders: int = 0


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
        due = await _drop_stale_slots(app, lst, due, now)
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
                    nxt = schedule.next_due(_cron(expr), ZoneInfo(tz), now)
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
                nxt = schedule.next_due(_cron(expr), ZoneInfo(tz), now)
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
    rendered = render_draft(app, d, now, f"{app.base_url}/archive/{d.lst.slug}/{edition.id}")
    subject = f"[Test] {rendered.subject}" if kind == DeliveryKind.TEST else rendered.subject
    edition.subject, edition.html, edition.text = subject, rendered.html, rendered.text
    return edition.id


async def _skip_slots(
    app: App, lst: MailingList, watermark: int, members: Sequence[compose_store.Slot], now: datetime
) -> int:
    skipped = 0
    async with app.db.write() as s:
        for (expr, tz), ids in _by_schedule(members, lst).items():
            nxt = schedule.next_due(_cron(expr), ZoneInfo(tz), now)
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


async def reader_subscription(app: App, lst: MailingList, address: str) -> tuple[Subscription, Subscriber]:
    _, key = normalize_address(address)
    async with app.db.read() as s:
        reader = await readers.subscriber_by_email(s, key)
        sub = await readers.subscription_for(s, reader.id, lst.id) if reader else None
    if reader is None or sub is None:
        raise UsageError(f"{address} is not subscribed to {lst.slug}")
    return sub, reader


async def preview(
    app: App, lst: MailingList, now: datetime, address: str | None = None
) -> tuple[Draft, rendering.Rendered]:
    """Exactly the digest a reader (or a new reader) would get next; changes nothing."""
    watermark = 0
    if address:
        sub, _ = await reader_subscription(app, lst, address)
        watermark = sub.watermark
    async with app.db.read() as s:
        upto = await compose_store.list_max_seq(s, lst.id)
        d = await draft(app, s, lst, watermark, upto, now)
    if d.empty:
        return d, rendering.Rendered("", "", "")
    return d, render_draft(app, d, now, f"{app.base_url}/archive/{lst.slug}")


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


# ---------------------------------------------------------------- deliver


TEST_TOKEN = delivery.TEST_TOKEN
DeliverStats = delivery.DeliverStats


async def deliver(
    app: App,
    clock: Clock = utcnow,
    *,
    senders: Sequence[delivery.Sender] | None = None,
    once: bool = True,
    stop: asyncio.Event | None = None,
    on_outcome: Callable[[str], None] | None = None,
    wake: asyncio.Event | None = None,
) -> delivery.DeliverStats:
    """Send what is due (see digest.delivery): until nothing is claimable, or until `stop`."""
    return await delivery.deliver(
        app.db,
        app.cfg,
        app.keys,
        clock,
        senders=senders,
        once=once,
        stop=stop,
        on_outcome=on_outcome,
        wake=wake,
    )


# ---------------------------------------------------------------- editions


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
        await ledger.set_edition_status(s, edition_id, EditionStatus.PAUSED, reason)


async def resume_edition(app: App, edition_id: int, now: datetime) -> None:
    async with app.db.write() as s:
        e = await _edition(s, edition_id)
        if e.status != EditionStatus.PAUSED:
            raise UsageError(f"edition {edition_id} is {e.status}, not paused")
        await ledger.set_edition_status(s, edition_id, EditionStatus.SENDING, None)


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
