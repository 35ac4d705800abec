"""The database edge: engines, transactions, migrations, and every query as a named function.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
`BEGIN IMMEDIATE`: the write lock is taken up front, so two processes never both read under a
shared lock and then deadlock upgrading it ("database is locked"). Reads use a second engine
whose transactions begin deferred, so readers never wait for writers. PostgreSQL uses one engine;
its row locks and advisory locks give the same guarantees between machines.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Connection,
    String,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from digest.errors import SchemaError
from digest.models import (
    OUTSTANDING,
    Article,
    ArticleSource,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Edition,
    EditionStatus,
    Event,
    ListSource,
    MailingList,
    Setting,
    Source,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    UTCDateTime,
)

HELD_EDITIONS = (EditionStatus.PAUSED, EditionStatus.CANCELLED)

# Any constant works; it only has to be the same in every process that assigns seq values.
SEQ_LOCK_KEY = 7_141_957


def _async_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    return "postgresql+psycopg://" + url[len("postgresql://") :]


def _sync_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return url
    return _async_url(url)


def resolve_url(url: str, base_dir: Path) -> str:
    """Make a relative SQLite path relative to the config file's folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel != ":memory:":
            return "sqlite:///" + str((base_dir / rel).resolve())
    return url


def _sqlite_engine(url: str, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level, so the BEGIN below is the only one issued.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """Engines and transactions for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        aurl = _async_url(url)
        if self.is_sqlite:
            self.writer = _sqlite_engine(aurl, immediate=True)
            self.reader = _sqlite_engine(aurl, immediate=False)
        else:
            self.writer = self.reader = create_async_engine(aurl, pool_size=10, max_overflow=10)
        self._write = async_sessionmaker(self.writer, expire_on_commit=False)
        self._read = async_sessionmaker(self.reader, expire_on_commit=False)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction: committed on success, rolled back on error."""
        async with self._write() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read() as session, session.begin():
            yield session

    async def close(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


# ---------------------------------------------------------------- migrations


def _alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "digest:migrations")
    cfg.set_main_option("sqlalchemy.url", _sync_url(url).replace("%", "%%"))
    return cfg


def _sync_engine_for(url: str) -> Any:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(_sync_url(url), connect_args={"timeout": 30} if url.startswith("sqlite") else {})


def migrate(url: str) -> tuple[str | None, str]:
    """Upgrade the schema to the newest revision; returns (old, new) revisions."""
    engine = _sync_engine_for(url)
    try:
        with engine.begin() as conn:
            if url.startswith("sqlite"):
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            before = MigrationContext.configure(conn).get_current_revision()
            cfg = _alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            after = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return before, after or ""


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config("sqlite:///:memory:")).get_current_head()
    assert head is not None
    return head


async def check_schema(db: Database) -> None:
    """Refuse to run on a missing or outdated schema, saying which command fixes it."""
    head = head_revision()

    def current(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with db.reader.connect() as conn:
        rev = await conn.run_sync(current)
    if rev is None:
        raise SchemaError("the database has no schema yet: run `digest init`")
    if rev != head:
        raise SchemaError(
            f"the database schema is at revision {rev}, this code needs {head}: run `digest migrate`"
        )


# ---------------------------------------------------------------- clock and settings


async def db_now(session: AsyncSession, wanted: datetime) -> datetime:
    """`wanted` (the caller's clock) read off the database's clock, so that workers on several
    machines agree about leases; a simulated clock (`tick --now`) keeps its offset. SQLite is local."""
    if _is_postgres(session):
        value = (await session.execute(text("SELECT clock_timestamp()"))).scalar_one()
        assert isinstance(value, datetime)
        return value + (wanted - datetime.now(UTC))
    return wanted


async def get_or_create_setting(session: AsyncSession, key: str, make: str | None = None) -> str:
    """A value generated once and shared by every process (e.g. a signing key)."""
    found = await session.get(Setting, key)
    if found:
        return found.value
    value = make if make is not None else secrets.token_urlsafe(32)
    await session.execute(_insert(session, Setting).values(key=key, value=value).on_conflict_do_nothing())
    again = await session.get(Setting, key)
    assert again is not None
    return again.value


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _insert(session: AsyncSession, table: Any) -> Any:
    """INSERT with ON CONFLICT support for the session's dialect."""
    return pg_insert(table) if _is_postgres(session) else sqlite_insert(table)


# ---------------------------------------------------------------- sources and lists


async def lock_config_sync(session: AsyncSession) -> None:
    """Processes starting together (several workers) sync the config one after another."""
    if _is_postgres(session):
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SEQ_LOCK_KEY + 1})


async def upsert_source(
    session: AsyncSession, name: str, kind: str, location: str, interval: timedelta
) -> Source:
    """Config is the truth for sources: create or update by name, keeping fetch state."""
    src = (await session.execute(select(Source).where(Source.name == name))).scalar_one_or_none()
    if src is None:
        src = Source(name=name, kind=kind, location=location, interval_seconds=int(interval.total_seconds()))
        session.add(src)
    else:
        if src.location != location:
            src.etag = src.last_modified = None  # conditional GET state belongs to the old URL
        src.kind, src.location = kind, location
        src.interval_seconds = int(interval.total_seconds())
    await session.flush()
    return src


async def upsert_list(
    session: AsyncSession, slug: str, values: dict[str, Any], source_ids: Sequence[int]
) -> MailingList:
    """Config is the truth for lists: create or update by slug and replace its sources."""
    lst = (await session.execute(select(MailingList).where(MailingList.slug == slug))).scalar_one_or_none()
    if lst is None:
        lst = MailingList(slug=slug, **values)
        session.add(lst)
    else:
        for key, value in values.items():
            setattr(lst, key, value)
    lst.active = True
    await session.flush()
    current = set(
        (await session.execute(select(ListSource.source_id).where(ListSource.list_id == lst.id))).scalars()
    )
    if current != set(source_ids):
        await session.execute(delete(ListSource).where(ListSource.list_id == lst.id))
        for sid in source_ids:
            session.add(ListSource(list_id=lst.id, source_id=sid))
        await session.flush()
    return lst


async def deactivate_lists_except(session: AsyncSession, slugs: Sequence[str]) -> None:
    """Lists removed from the config stop composing; their readers and history stay."""
    await session.execute(update(MailingList).where(MailingList.slug.not_in(slugs)).values(active=False))


async def source_by_name(session: AsyncSession, name: str) -> Source | None:
    return (await session.execute(select(Source).where(Source.name == name))).scalar_one_or_none()


async def all_sources(session: AsyncSession) -> Sequence[Source]:
    return (await session.execute(select(Source).order_by(Source.name))).scalars().all()


async def list_by_slug(session: AsyncSession, slug: str) -> MailingList | None:
    return (await session.execute(select(MailingList).where(MailingList.slug == slug))).scalar_one_or_none()


async def active_lists(session: AsyncSession) -> Sequence[MailingList]:
    stmt = select(MailingList).where(MailingList.active.is_(True)).order_by(MailingList.slug)
    return (await session.execute(stmt)).scalars().all()


async def list_source_names(session: AsyncSession, list_id: int) -> list[str]:
    stmt = (
        select(Source.name)
        .join(ListSource, ListSource.source_id == Source.id)
        .where(ListSource.list_id == list_id)
    )
    return list((await session.execute(stmt)).scalars().all())


# ---------------------------------------------------------------- ingest


@dataclass(frozen=True)
class NewArticle:
    guid: str
    url: str | None
    title: str
    author: str | None
    published_at: datetime
    summary: str
    content: str
    image_url: str | None
    fingerprint: str


async def lock_seq(session: AsyncSession) -> int:
    """Serialize seq assignment so seq values become visible in commit order; returns the last seq.

    SQLite already holds its write lock (BEGIN IMMEDIATE); PostgreSQL takes a transaction-scoped
    advisory lock, released at commit, so a composer never sees seq 102 committed before 101.
    """
    if _is_postgres(session):
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SEQ_LOCK_KEY})
    return int((await session.execute(select(func.coalesce(func.max(ArticleSource.seq), 0)))).scalar_one())


async def store_articles(
    session: AsyncSession, source_id: int, items: Sequence[NewArticle], now: datetime
) -> int:
    """Upsert a source's items, deduplicated by source guid, canonical URL and fingerprint.

    Returns how many new sightings were recorded (each gets the next seq).
    """
    last_seq = await lock_seq(session)
    added = 0
    for item in items:
        seen = await session.execute(
            select(ArticleSource.article_id).where(
                ArticleSource.source_id == source_id, ArticleSource.guid == item.guid
            )
        )
        if seen.first() is not None:
            continue
        match = [Article.fingerprint == item.fingerprint]
        if item.url:
            match.append(Article.url == item.url)
        article = (await session.execute(select(Article).where(or_(*match)).limit(1))).scalar_one_or_none()
        if article is None:
            article = Article(
                guid=item.guid,
                url=item.url,
                title=item.title,
                author=item.author,
                published_at=item.published_at,
                summary=item.summary,
                content=item.content,
                image_url=item.image_url,
                fingerprint=item.fingerprint,
                created_at=now,
            )
            session.add(article)
            await session.flush()
        else:
            linked = await session.execute(
                select(ArticleSource.seq).where(
                    ArticleSource.article_id == article.id, ArticleSource.source_id == source_id
                )
            )
            if linked.first() is not None:
                continue  # same story under a new guid in the same source
        last_seq += 1
        session.add(
            ArticleSource(
                article_id=article.id, source_id=source_id, guid=item.guid, seq=last_seq, ingested_at=now
            )
        )
        await session.flush()
        added += 1
    return added


async def record_fetch(
    session: AsyncSession,
    source_id: int,
    now: datetime,
    *,
    error: str | None,
    etag: str | None = None,
    last_modified: str | None = None,
    keep_validators: bool = False,
) -> None:
    """Remember when a source was fetched and how it went (the error stays until a success)."""
    values: dict[str, Any] = {"last_fetched_at": now}
    if error is None:
        values.update(last_error=None, last_error_at=None, last_success_at=now)
        if not keep_validators:
            values.update(etag=etag, last_modified=last_modified)
    else:
        values.update(last_error=error[:2000], last_error_at=now)
    await session.execute(update(Source).where(Source.id == source_id).values(**values))


async def article_count(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(Article))).scalar_one())


# ---------------------------------------------------------------- selection


async def list_max_seq(session: AsyncSession, list_id: int) -> int:
    """The newest sighting any of the list's sources has committed."""
    stmt = (
        select(func.coalesce(func.max(ArticleSource.seq), 0))
        .join(ListSource, ListSource.source_id == ArticleSource.source_id)
        .where(ListSource.list_id == list_id)
    )
    return int((await session.execute(stmt)).scalar_one())


@dataclass(frozen=True)
class Candidate:
    article: Article
    source_name: str
    seq: int


async def new_articles_for_list(
    session: AsyncSession, list_id: int, after_seq: int, upto_seq: int, since: datetime
) -> list[Candidate]:
    """Articles first seen by this list in (after_seq, upto_seq], published since `since`.

    An article seen in two of the list's sources counts at its first sighting, so a reader who
    already had it from one source does not get it again when the other source catches up.
    """
    first = (
        select(ArticleSource.article_id, func.min(ArticleSource.seq).label("seq"))
        .join(ListSource, ListSource.source_id == ArticleSource.source_id)
        .where(ListSource.list_id == list_id, ArticleSource.seq <= upto_seq)
        .group_by(ArticleSource.article_id)
        .subquery()
    )
    stmt = (
        select(Article, Source.name, first.c.seq)
        .join(first, first.c.article_id == Article.id)
        .join(ArticleSource, and_(ArticleSource.article_id == Article.id, ArticleSource.seq == first.c.seq))
        .join(Source, Source.id == ArticleSource.source_id)
        .where(first.c.seq > after_seq, Article.published_at >= since)
        .order_by(Article.published_at.desc(), first.c.seq.desc())
    )
    rows = (await session.execute(stmt)).all()
    return [Candidate(article=a, source_name=name, seq=int(seq)) for a, name, seq in rows]


async def articles_by_ids(session: AsyncSession, ids: Sequence[int]) -> list[Article]:
    found = {a.id: a for a in (await session.execute(select(Article).where(Article.id.in_(ids)))).scalars()}
    return [found[i] for i in ids if i in found]


# ---------------------------------------------------------------- subscribers


async def subscriber_by_email(session: AsyncSession, email_key: str) -> Subscriber | None:
    stmt = select(Subscriber).where(Subscriber.email_key == email_key)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_or_create_subscriber(
    session: AsyncSession, email: str, email_key: str, name: str, now: datetime
) -> tuple[Subscriber, bool]:
    found = await subscriber_by_email(session, email_key)
    if found:
        return found, False
    sub = Subscriber(email=email, email_key=email_key, name=name, created_at=now, updated_at=now)
    session.add(sub)
    await session.flush()
    return sub, True


async def subscription_for(session: AsyncSession, subscriber_id: int, list_id: int) -> Subscription | None:
    stmt = select(Subscription).where(
        Subscription.subscriber_id == subscriber_id, Subscription.list_id == list_id
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def subscription_by_token(session: AsyncSession, token: str) -> Subscription | None:
    return (
        await session.execute(select(Subscription).where(Subscription.token == token))
    ).scalar_one_or_none()


async def subscriptions_of(
    session: AsyncSession, subscriber_id: int
) -> list[tuple[Subscription, MailingList]]:
    stmt = (
        select(Subscription, MailingList)
        .join(MailingList, MailingList.id == Subscription.list_id)
        .where(Subscription.subscriber_id == subscriber_id)
        .order_by(MailingList.slug)
    )
    return [(s, lst) for s, lst in (await session.execute(stmt)).all()]


async def readers(
    session: AsyncSession, list_id: int | None
) -> list[tuple[Subscriber, Subscription, MailingList]]:
    """Every subscription (optionally of one list) with its reader, for listing and export."""
    stmt = (
        select(Subscriber, Subscription, MailingList)
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .join(MailingList, MailingList.id == Subscription.list_id)
        .order_by(Subscriber.email_key, MailingList.slug)
    )
    if list_id is not None:
        stmt = stmt.where(Subscription.list_id == list_id)
    return [(a, b, c) for a, b, c in (await session.execute(stmt)).all()]


async def add_event(
    session: AsyncSession,
    kind: str,
    now: datetime,
    *,
    subscriber_id: int | None,
    subscription_id: int | None = None,
    delivery_id: int | None = None,
    **detail: Any,
) -> None:
    session.add(
        Event(
            subscriber_id=subscriber_id,
            subscription_id=subscription_id,
            delivery_id=delivery_id,
            kind=kind,
            detail=detail,
            created_at=now,
        )
    )


async def events_of(session: AsyncSession, subscriber_id: int, limit: int = 50) -> Sequence[Event]:
    stmt = (
        select(Event)
        .where(Event.subscriber_id == subscriber_id)
        .order_by(Event.created_at.desc(), Event.id.desc())
        .limit(limit)
    )
    return (await session.execute(stmt)).scalars().all()


async def deliveries_to(session: AsyncSession, address: str, limit: int = 10) -> Sequence[Delivery]:
    stmt = (
        select(Delivery)
        .where(func.lower(Delivery.address) == address.lower())
        .order_by(Delivery.id.desc())
        .limit(limit)
    )
    return (await session.execute(stmt)).scalars().all()


# ---------------------------------------------------------------- compose


@dataclass(frozen=True)
class Slot:
    """One reader due for a digest, as little as composing needs (100,000 of these stay small)."""

    id: int
    watermark: int
    cadence: str
    send_hour: int | None
    weekday: int | None
    timezone: str | None
    next_due_at: datetime | None


def _sendable(list_id: int) -> Any:
    outstanding = (
        select(Delivery.id)
        .where(Delivery.subscription_id == Subscription.id, Delivery.status.in_(list(OUTSTANDING)))
        .exists()
    )
    active = select(Subscriber.id).where(
        Subscriber.id == Subscription.subscriber_id, Subscriber.status == "active"
    )
    return and_(
        Subscription.list_id == list_id,
        Subscription.status == SubscriptionStatus.CONFIRMED,
        Subscription.confirmed_at.is_not(None),
        active.exists(),
        ~outstanding,
    )


async def due_readers(session: AsyncSession, list_id: int, due_before: datetime | None) -> list[Slot]:
    """Confirmed, active readers of a list with nothing outstanding (and, with `due_before`, due)."""
    stmt = select(
        Subscription.id,
        Subscription.watermark,
        Subscription.cadence,
        Subscription.send_hour,
        Subscription.weekday,
        Subscription.timezone,
        Subscription.next_due_at,
    ).where(_sendable(list_id))
    if due_before is not None:
        stmt = stmt.where(Subscription.next_due_at <= due_before)
    return [Slot(*row) for row in (await session.execute(stmt.order_by(Subscription.id))).all()]


async def advance_readers(
    session: AsyncSession,
    list_id: int,
    ids: Sequence[int],
    old_watermark: int,
    new_watermark: int,
    next_due: datetime,
    now: datetime,
    due_before: datetime | None,
) -> list[int]:
    """Compare-and-set watermark and next slot for a set of readers; returns those this composer won.

    The row locks this UPDATE takes come before any delivery is inserted, so two composers
    (a second scheduler, a retried tick) can never both compose for one reader.
    """
    cond = [Subscription.id.in_(ids), Subscription.watermark == old_watermark, _sendable(list_id)]
    if due_before is not None:
        cond.append(Subscription.next_due_at <= due_before)
    values: dict[str, Any] = {"watermark": new_watermark, "next_due_at": next_due}
    if new_watermark != old_watermark:
        values["last_digest_at"] = now
    stmt = update(Subscription).where(*cond).values(**values).returning(Subscription.id)
    return [int(i) for i in (await session.execute(stmt)).scalars().all()]


async def insert_digest_deliveries(
    session: AsyncSession,
    edition_id: int,
    ids: Sequence[int],
    from_seq: int,
    to_seq: int,
    now: datetime,
    message_id_suffix: str,
) -> int:
    """One INSERT … SELECT for a chunk of readers; Message-IDs are <d{edition}.{subscription}{suffix}>."""
    sid = func.cast(Subscription.id, String)
    source = (
        select(
            literal(DeliveryKind.DIGEST.value),
            literal(edition_id),
            Subscription.id,
            Subscriber.email,
            # The edition is part of the key: after a failure rolls a watermark back, the same seq
            # range is composed again into a new edition and must not collide with the failed row.
            # The compare-and-set in advance_readers is what makes composition exactly-once.
            literal("digest:") + sid + literal(f":{from_seq}:{to_seq}:{edition_id}"),
            literal(from_seq),
            literal(to_seq),
            literal(10),
            literal(DeliveryStatus.PENDING.value),
            literal(0),
            literal(now, UTCDateTime()),
            literal(f"<d{edition_id}.") + sid + literal(message_id_suffix),
            literal(now, UTCDateTime()),
            literal(now, UTCDateTime()),
        )
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Subscription.id.in_(ids))
    )
    columns = [
        "kind", "edition_id", "subscription_id", "address", "dedupe_key", "from_seq", "to_seq", "priority",
        "status", "attempts", "next_attempt_at", "message_id", "created_at", "updated_at",
    ]  # fmt: skip
    stmt = (
        _insert(session, Delivery)
        .from_select(columns, source)
        .on_conflict_do_nothing()
        .returning(Delivery.id)
    )
    return len((await session.execute(stmt)).all())


async def record_skips(session: AsyncSession, ids: Sequence[int], now: datetime, next_due: datetime) -> None:
    """A `skipped` event for each reader whose slot came with nothing new."""
    source = select(
        Subscription.subscriber_id,
        Subscription.id,
        literal("skipped"),
        literal({"reason": "nothing new", "next_due_at": next_due.isoformat()}, JSON()),
        literal(now, UTCDateTime()),
    ).where(Subscription.id.in_(ids))
    stmt = insert(Event).from_select(
        ["subscriber_id", "subscription_id", "kind", "detail", "created_at"], source
    )
    await session.execute(stmt)


async def insert_delivery(session: AsyncSession, values: dict[str, Any]) -> int | None:
    """Insert one delivery; None when its dedupe key exists already (composed before)."""
    stmt = _insert(session, Delivery).values(**values).on_conflict_do_nothing().returning(Delivery.id)
    row = (await session.execute(stmt)).first()
    return int(row[0]) if row else None


async def set_next_due(session: AsyncSession, subscription_id: int, next_due: datetime | None) -> None:
    await session.execute(
        update(Subscription).where(Subscription.id == subscription_id).values(next_due_at=next_due)
    )


# ---------------------------------------------------------------- deliver


async def claim_deliveries(
    session: AsyncSession,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    lease_now: datetime | None = None,
) -> list[int]:
    """Lease up to `limit` due deliveries; SKIP LOCKED lets workers on PostgreSQL share the queue.

    `now` decides what is due; `lease_now` (the database clock, see db_now) dates the lease.
    """
    due = (
        select(Delivery.id)
        .where(
            Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.DEFERRED]),
            Delivery.next_attempt_at <= now,
            ~select(Edition.id)
            .where(Edition.id == Delivery.edition_id, Edition.status.in_(list(HELD_EDITIONS)))
            .exists(),
        )
        .order_by(Delivery.priority, Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(Delivery)
        .where(Delivery.id.in_(due.scalar_subquery()))
        .values(
            status=DeliveryStatus.SENDING,
            lease_owner=owner,
            lease_expires_at=(lease_now or now) + lease,
            updated_at=now,
        )
        .returning(Delivery.id)
    )
    return sorted(int(r) for r in (await session.execute(stmt)).scalars().all())


async def reap_expired_leases(session: AsyncSession, now: datetime) -> int:
    """Deliveries whose worker died go back to pending (they are resent with the same Message-ID)."""
    # SKIP LOCKED: a row another worker is finishing right now is not waited for (no deadlock
    # between the reaper's scan and that worker's update); it is not expired anyway.
    expired = (
        select(Delivery.id)
        .where(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(Delivery)
        .where(Delivery.id.in_(expired.scalar_subquery()))
        .values(status=DeliveryStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now)
    )
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Claimed:
    delivery: Delivery
    subscription: Subscription | None
    subscriber: Subscriber | None
    edition: Edition | None
    mailing_list: MailingList | None


async def load_claimed(
    session: AsyncSession,
    ids: Sequence[int],
    editions: dict[int, tuple[Edition, MailingList | None]] | None = None,
) -> list[Claimed]:
    """Claimed deliveries with their reader, edition and list.

    Editions (whose rendered bodies are large) are loaded once per edition, not once per row:
    pass the same `editions` dict on every call to keep them across batches.
    """
    cache = {} if editions is None else editions
    stmt = (
        select(Delivery, Subscription, Subscriber)
        .outerjoin(Subscription, Subscription.id == Delivery.subscription_id)
        .outerjoin(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Delivery.id.in_(ids))
        .order_by(Delivery.id)
    )
    rows = (await session.execute(stmt)).all()
    missing = {d.edition_id for d, _, _ in rows if d.edition_id is not None and d.edition_id not in cache}
    if missing:
        found = await session.execute(
            select(Edition, MailingList)
            .outerjoin(MailingList, MailingList.id == Edition.list_id)
            .where(Edition.id.in_(missing))
        )
        for edition, lst in found.all():
            cache[edition.id] = (edition, lst)
    out = []
    for d, sub, reader in rows:
        pair = cache.get(d.edition_id) if d.edition_id is not None else None
        out.append(Claimed(d, sub, reader, pair[0] if pair else None, pair[1] if pair else None))
    return out


async def finish_delivery(
    session: AsyncSession, delivery_id: int, owner: str, values: dict[str, Any]
) -> bool:
    """Record an outcome if this worker still holds the lease; False means someone else took it."""
    stmt = (
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.lease_owner == owner,
            Delivery.status == DeliveryStatus.SENDING,
        )
        .values(lease_owner=None, lease_expires_at=None, **values)
    )
    return bool((await session.execute(stmt)).rowcount == 1)  # type: ignore[attr-defined]


async def renew_leases(session: AsyncSession, owner: str, until: datetime) -> None:
    """Extend every lease this worker holds; a worker that stops renewing loses them to the reaper."""
    await session.execute(
        update(Delivery)
        .where(Delivery.lease_owner == owner, Delivery.status == DeliveryStatus.SENDING)
        .values(lease_expires_at=until)
    )


async def release_leases(session: AsyncSession, owner: str, ids: Sequence[int], now: datetime) -> None:
    """Give back claimed rows this worker did not get to (it is stopping)."""
    await session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.lease_owner == owner, Delivery.status == DeliveryStatus.SENDING)
        .values(status=DeliveryStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now)
    )


async def release_owner(session: AsyncSession, owner: str, now: datetime) -> int:
    """A stopping worker hands back every row it still holds, so nothing waits for a lease to expire."""
    stmt = (
        update(Delivery)
        .where(Delivery.lease_owner == owner, Delivery.status == DeliveryStatus.SENDING)
        .values(status=DeliveryStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now)
    )
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def pause_edition(session: AsyncSession, edition_id: int, reason: str, now: datetime) -> None:
    """Stop an edition; what its breaker deferred goes back to pending, to go out on resume."""
    await session.execute(
        update(Edition)
        .where(Edition.id == edition_id, Edition.status == EditionStatus.SENDING)
        .values(status=EditionStatus.PAUSED, pause_reason=reason[:1000])
    )
    await session.execute(
        update(Delivery)
        .where(Delivery.edition_id == edition_id, Delivery.status == DeliveryStatus.DEFERRED)
        .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now, updated_at=now)
    )


async def set_edition_status(session: AsyncSession, edition_id: int, status: str, reason: str | None) -> bool:
    """Pause or resume an edition by hand; False when it does not exist."""
    result = await session.execute(
        update(Edition).where(Edition.id == edition_id).values(status=status, pause_reason=reason)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def cancel_edition(session: AsyncSession, edition_id: int, now: datetime) -> list[Delivery]:
    """Cancel what has not gone out; returns the cancelled digests so their watermarks roll back."""
    await session.execute(
        update(Edition).where(Edition.id == edition_id).values(status=EditionStatus.CANCELLED)
    )
    stmt = (
        update(Delivery)
        .where(
            Delivery.edition_id == edition_id,
            Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.DEFERRED]),
        )
        .values(status=DeliveryStatus.CANCELLED, updated_at=now)
        .returning(Delivery)
    )
    return list((await session.execute(stmt)).scalars().all())


async def requeue_unsent(session: AsyncSession, edition_id: int, include_unknown: bool, now: datetime) -> int:
    """Send again what never arrived (same Message-ID, so receivers can de-duplicate).

    A digest is requeued only while its reader's watermark still stands where this delivery
    left it (rolled back to from_seq, or at to_seq): a reader who has since had a newer digest
    holding these articles must not get them twice.
    """
    statuses = [DeliveryStatus.FAILED, DeliveryStatus.CANCELLED, DeliveryStatus.DEFERRED]
    if include_unknown:
        statuses.append(DeliveryStatus.UNKNOWN)
    rows = await session.execute(
        select(Delivery, Subscription.watermark)
        .outerjoin(Subscription, Subscription.id == Delivery.subscription_id)
        .where(Delivery.edition_id == edition_id, Delivery.status.in_(statuses))
    )
    requeued = 0
    for d, watermark in rows.all():
        if d.subscription_id is not None and d.from_seq is not None and d.to_seq is not None:
            if watermark not in (d.from_seq, d.to_seq):
                continue
            await rollback_watermark(session, d.subscription_id, d.to_seq, d.from_seq)
        d.status, d.attempts, d.next_attempt_at, d.created_at, d.updated_at = (
            DeliveryStatus.PENDING,
            0,
            now,
            now,
            now,
        )
        requeued += 1
    await session.execute(
        update(Edition)
        .where(Edition.id == edition_id)
        .values(status=EditionStatus.SENDING, pause_reason=None)
    )
    return requeued


async def suppress_subscriber(
    session: AsyncSession, subscriber_id: int, status: str, now: datetime, reason: str
) -> None:
    """Stop all mail to a reader (hard bounce, complaint, operator); the event says why."""
    await session.execute(
        update(Subscriber).where(Subscriber.id == subscriber_id).values(status=status, updated_at=now)
    )
    await add_event(
        session, "suppressed", now, subscriber_id=subscriber_id, status=status, reason=reason[:500]
    )


async def skip_outstanding(session: AsyncSession, subscription_id: int, now: datetime, reason: str) -> int:
    """A reader who left gets nothing more, even from an edition that is half sent.

    Rows being sent right now keep their lease; the worker re-checks the reader before sending.
    """
    stmt = (
        update(Delivery)
        .where(
            Delivery.subscription_id == subscription_id,
            Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.DEFERRED]),
        )
        .values(status=DeliveryStatus.SKIPPED, smtp_reply=reason, updated_at=now)
    )
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def finish_deliveries(
    session: AsyncSession, owner: str, outcomes: Sequence[tuple[int, dict[str, Any]]]
) -> set[int]:
    """Record many outcomes in one statement per shape; returns the ids whose lease was lost.

    Only rows this worker still holds are written: a row whose lease expired and was taken by
    another worker keeps that worker's state (the message may go out twice; it is logged).
    """
    ids = [i for i, _ in outcomes]
    held = select(Delivery.id).where(
        Delivery.id.in_(ids), Delivery.lease_owner == owner, Delivery.status == DeliveryStatus.SENDING
    )
    mine = {int(i) for i in (await session.execute(held)).scalars()}
    table = cast(Table, Delivery.__table__)
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for delivery_id, values in sorted(outcomes, key=lambda o: o[0]):  # one lock order for every worker
        if delivery_id in mine:
            shapes.setdefault(tuple(sorted(values)), []).append(
                {"b_id": delivery_id, **{f"b_{k}": v for k, v in values.items()}}
            )
    for keys, params in shapes.items():
        stmt = (
            update(table)
            .where(
                table.c.id == bindparam("b_id"),
                table.c.lease_owner == owner,
                table.c.status == DeliveryStatus.SENDING,
            )
            .values({**{k: bindparam(f"b_{k}") for k in keys}, "lease_owner": None, "lease_expires_at": None})
        )
        await session.execute(stmt, params)
    return set(ids) - mine


async def rollback_watermark(session: AsyncSession, subscription_id: int, from_seq: int, to_seq: int) -> None:
    """Give a reader back the articles of a delivery that will never arrive."""
    await session.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id, Subscription.watermark == to_seq)
        .values(watermark=from_seq)
    )


async def pending_count(session: AsyncSession, now: datetime | None = None) -> int:
    stmt = select(func.count()).select_from(Delivery).where(Delivery.status.in_(list(OUTSTANDING)))
    if now is not None:
        stmt = stmt.where(
            or_(
                and_(Delivery.status != DeliveryStatus.SENDING, Delivery.next_attempt_at <= now),
                and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_expires_at < now),
            )
        )
    return int((await session.execute(stmt)).scalar_one())


async def add_edition(session: AsyncSession, edition: Edition) -> Edition:
    session.add(edition)
    await session.flush()
    return edition


async def finish_done_editions(session: AsyncSession) -> None:
    """An edition with nothing outstanding is done."""
    outstanding = (
        select(Delivery.id)
        .where(Delivery.edition_id == Edition.id, Delivery.status.in_(list(OUTSTANDING)))
        .exists()
    )
    await session.execute(
        update(Edition).where(Edition.status == "sending", ~outstanding).values(status="done")
    )


# ---------------------------------------------------------------- status


async def edition_counts(
    session: AsyncSession, list_id: int | None, limit: int = 20
) -> list[tuple[Edition, str, dict[str, int]]]:
    """Recent editions with their list slug and delivery counts by status."""
    stmt = select(Edition, MailingList.slug).join(MailingList, MailingList.id == Edition.list_id)
    if list_id is not None:
        stmt = stmt.where(Edition.list_id == list_id)
    stmt = stmt.order_by(Edition.id.desc()).limit(limit)
    rows = (await session.execute(stmt)).all()
    ids = [e.id for e, _ in rows]
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    if ids:
        cstmt = (
            select(Delivery.edition_id, Delivery.status, func.count())
            .where(Delivery.edition_id.in_(ids))
            .group_by(Delivery.edition_id, Delivery.status)
        )
        for eid, status, n in (await session.execute(cstmt)).all():
            if eid is not None:
                counts[int(eid)][str(status)] = int(n)
    return [(e, slug, counts[e.id]) for e, slug in rows]


async def delivery_counts(session: AsyncSession) -> dict[tuple[str, str], int]:
    """Deliveries by (kind, status), for the status command and metrics."""
    stmt = select(Delivery.kind, Delivery.status, func.count()).group_by(Delivery.kind, Delivery.status)
    return {(str(k), str(s)): int(n) for k, s, n in (await session.execute(stmt)).all()}


# ---------------------------------------------------------------- web pages


async def article_by_id(session: AsyncSession, article_id: int) -> Article | None:
    return await session.get(Article, article_id)


async def edition_by_id(session: AsyncSession, edition_id: int) -> Edition | None:
    return await session.get(Edition, edition_id)


async def public_editions(session: AsyncSession, list_id: int, limit: int = 100) -> Sequence[Edition]:
    """A list's past digests for its archive page (never test sends)."""
    stmt = (
        select(Edition)
        .where(Edition.list_id == list_id, Edition.kind == "digest")
        .order_by(Edition.id.desc())
        .limit(limit)
    )
    return (await session.execute(stmt)).scalars().all()


async def ping(session: AsyncSession) -> None:
    await session.execute(text("SELECT 1"))


async def list_by_id(session: AsyncSession, list_id: int) -> MailingList | None:
    return await session.get(MailingList, list_id)


# ---------------------------------------------------------------- readers on the web (signup.py)


async def subscription_by_id(session: AsyncSession, subscription_id: int) -> Subscription | None:
    """A subscription named by a confirmation token (which carries ids, never addresses)."""
    return await session.get(Subscription, subscription_id)


async def subscription_for_update(session: AsyncSession, subscription_id: int) -> Subscription | None:
    """Lock a subscription while confirming it, so two clicks confirm (and record) it once."""
    stmt = (
        select(Subscription)
        .where(Subscription.id == subscription_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def subscription_by_token_for_update(session: AsyncSession, token: str) -> Subscription | None:
    """Lock the subscription a link names while it changes, so concurrent clicks record one event."""
    stmt = (
        select(Subscription)
        .where(Subscription.token == token)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def subscription_by_token_casefold(session: AsyncSession, token: str) -> Subscription | None:
    """Mail to unsub+TOKEN@ may arrive case-folded by an MTA; only a unique match counts."""
    stmt = select(Subscription).where(func.lower(Subscription.token) == token.lower()).limit(2)
    found = (await session.execute(stmt)).scalars().all()
    return found[0] if len(found) == 1 else None


async def subscriber_by_id(session: AsyncSession, subscriber_id: int) -> Subscriber | None:
    """The reader behind a subscription (for the address and global status)."""
    return await session.get(Subscriber, subscriber_id)


async def last_confirmation_sent(session: AsyncSession, subscription_id: int) -> datetime | None:
    """When this subscription was last mailed a confirmation: at most one per address and list a day."""
    stmt = select(func.max(Event.created_at)).where(
        Event.subscription_id == subscription_id, Event.kind == "confirmation_sent"
    )
    found: datetime | None = (await session.execute(stmt)).scalar_one_or_none()
    return found


async def transactional_count_since(session: AsyncSession, since: datetime) -> int:
    """Confirmation emails queued since a time, for the global hourly budget against list bombing."""
    stmt = (
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.kind == "transactional", Delivery.created_at >= since)
    )
    return int((await session.execute(stmt)).scalar_one())


async def delete_pending_before(session: AsyncSession, before: datetime) -> int:
    """Signups nobody confirmed within the grace period are deleted, not kept as unconsented data."""
    stmt = delete(Subscription).where(
        Subscription.status == SubscriptionStatus.PENDING, Subscription.signup_at < before
    )
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def delete_readers_without_history(session: AsyncSession) -> int:
    """Addresses left with no subscription and nothing on record that must be kept (consent, bounces)."""
    has_subscription = select(Subscription.id).where(Subscription.subscriber_id == Subscriber.id).exists()
    has_history = (
        select(Event.id)
        .where(
            Event.subscriber_id == Subscriber.id,
            Event.kind.in_(
                [
                    "confirmed",
                    "unsubscribed",
                    "bounced",
                    "complained",
                    "suppressed",
                    "unsuppressed",
                    "policy_rejection",
                ]
            ),
        )
        .exists()
    )
    stmt = delete(Subscriber).where(~has_subscription, ~has_history)
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def delete_subscriber(session: AsyncSession, subscriber_id: int) -> None:
    """Erase a reader on an operator's request: subscriptions and events go with the row."""
    await session.execute(delete(Subscriber).where(Subscriber.id == subscriber_id))


# ---------------------------------------------------------------- bounce inbox (bounces.py)


async def mark_delivery_bounced(
    session: AsyncSession, delivery_id: int, code: int | None, reply: str, now: datetime
) -> bool:
    """A DSN proves a delivery we recorded as sent (or unknown) never arrived; the watermark stays."""
    stmt = (
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.status.in_([DeliveryStatus.SENT, DeliveryStatus.UNKNOWN]),
        )
        .values(status=DeliveryStatus.FAILED, smtp_code=code, smtp_reply=reply[:2000], updated_at=now)
    )
    return bool((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def bounce_history(session: AsyncSession, subscriber_id: int) -> list[tuple[datetime, str]]:
    """A reader's bounces since an operator last lifted their suppression, for the Mailman score."""
    lifted = (
        select(func.max(Event.created_at))
        .where(Event.subscriber_id == subscriber_id, Event.kind == "unsuppressed")
        .scalar_subquery()
    )
    stmt = (
        select(Event.created_at, Event.detail)
        .where(
            Event.subscriber_id == subscriber_id,
            Event.kind == "bounced",
            or_(lifted.is_(None), Event.created_at > lifted),
        )
        .order_by(Event.created_at, Event.id)
    )
    rows = (await session.execute(stmt)).all()
    return [(when, str((detail or {}).get("bounce_class") or "")) for when, detail in rows]


async def set_bounce_score(session: AsyncSession, subscriber_id: int, score: float, now: datetime) -> None:
    """Keep the reader's current soft-bounce score where operators (and `subscribers show`) see it."""
    await session.execute(
        update(Subscriber).where(Subscriber.id == subscriber_id).values(bounce_score=score, updated_at=now)
    )


async def inbound_seen(
    session: AsyncSession, inbound_id: str, subscriber_id: int | None, delivery_id: int | None
) -> bool:
    """A mailbox processed twice (or a DSN the MTA sent twice) must not count the same message twice."""
    cond = [Event.detail["inbound_id"].as_string() == inbound_id]
    if subscriber_id is not None:
        cond.append(Event.subscriber_id == subscriber_id)  # uses ix_events_subscriber
    elif delivery_id is not None:
        cond.append(Event.delivery_id == delivery_id)
    stmt = select(Event.id).where(*cond).limit(1)
    return (await session.execute(stmt)).first() is not None


async def last_sent_delivery(session: AsyncSession, subscription_id: int) -> Delivery | None:
    """The digest a token-only complaint most likely refers to: the reader's latest one that arrived."""
    stmt = (
        select(Delivery)
        .where(
            Delivery.subscription_id == subscription_id,
            Delivery.kind == DeliveryKind.DIGEST,
            Delivery.sent_at.is_not(None),
        )
        .order_by(Delivery.sent_at.desc(), Delivery.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def edition_complaint_counts(session: AsyncSession, edition_id: int) -> tuple[int, int]:
    """(complaints, delivered) for one edition: its complaint rate (STANDARDS item 23)."""
    complaints = (
        select(func.count(func.distinct(Event.delivery_id)))
        .select_from(Event)
        .join(Delivery, Delivery.id == Event.delivery_id)
        .where(Event.kind == "complained", Delivery.edition_id == edition_id)
    )
    delivered = (
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.edition_id == edition_id, Delivery.status == DeliveryStatus.SENT)
    )
    return (
        int((await session.execute(complaints)).scalar_one()),
        int((await session.execute(delivered)).scalar_one()),
    )


async def sent_day_complaint_counts(session: AsyncSession, start: datetime, end: datetime) -> tuple[int, int]:
    """(complaints, delivered) over the digests sent in [start, end): the daily complaint rate."""
    complaints = (
        select(func.count(func.distinct(Event.delivery_id)))
        .select_from(Event)
        .join(Delivery, Delivery.id == Event.delivery_id)
        .where(Event.kind == "complained", Delivery.sent_at >= start, Delivery.sent_at < end)
    )
    delivered = (
        select(func.count())
        .select_from(Delivery)
        .where(
            Delivery.kind == DeliveryKind.DIGEST,
            Delivery.status == DeliveryStatus.SENT,
            Delivery.sent_at >= start,
            Delivery.sent_at < end,
        )
    )
    return (
        int((await session.execute(complaints)).scalar_one()),
        int((await session.execute(delivered)).scalar_one()),
    )


async def sending_editions(session: AsyncSession) -> list[int]:
    """Editions still going out: what a complaint-rate alarm pauses."""
    stmt = select(Edition.id).where(Edition.status == EditionStatus.SENDING).order_by(Edition.id)
    return [int(i) for i in (await session.execute(stmt)).scalars().all()]


async def lift_suppression(session: AsyncSession, subscriber_id: int, now: datetime) -> None:
    """An operator lets a suppressed reader receive mail again, with a clean bounce score."""
    await session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .values(status="active", bounce_score=0.0, updated_at=now)
    )


async def trim_event_raw(session: AsyncSession, kinds: Sequence[str], before: datetime) -> int:
    """Raw bounce messages are kept 30 days for diagnosis, then dropped from their events."""
    stmt = select(Event).where(
        Event.kind.in_(kinds),
        Event.created_at < before,
        Event.detail["raw"].as_string().is_not(None),
    )
    trimmed = 0
    for found in (await session.execute(stmt)).scalars().all():
        detail = {k: v for k, v in (found.detail or {}).items() if k != "raw"}
        detail["raw_trimmed"] = True
        found.detail = detail
        trimmed += 1
    await session.flush()
    return trimmed


async def inbound_events_since(
    session: AsyncSession, kinds: Sequence[str], since: datetime
) -> list[tuple[str, dict[str, Any], str | None, str | None]]:
    """(kind, detail, delivery address, reader address) of bounce-inbox events, for the report."""
    stmt = (
        select(Event.kind, Event.detail, Delivery.address, Subscriber.email)
        .outerjoin(Delivery, Delivery.id == Event.delivery_id)
        .outerjoin(Subscriber, Subscriber.id == Event.subscriber_id)
        .where(Event.kind.in_(kinds), Event.created_at >= since)
        .order_by(Event.id)
    )
    return [(str(k), dict(d or {}), a, e) for k, d, a, e in (await session.execute(stmt)).all()]


# ---------------------------------------------------------------- operators: status, metrics, admin


async def subscriber_status_counts(session: AsyncSession) -> dict[str, int]:
    """Readers by global status, for /metrics and the admin page."""
    stmt = select(Subscriber.status, func.count()).group_by(Subscriber.status)
    return {str(k): int(n) for k, n in (await session.execute(stmt)).all()}


async def list_reader_counts(session: AsyncSession, list_id: int | None) -> list[tuple[str, str, str, int]]:
    """(list slug, subscription status, cadence, readers): who reads what, and how often."""
    stmt = (
        select(MailingList.slug, Subscription.status, Subscription.cadence, func.count())
        .join(MailingList, MailingList.id == Subscription.list_id)
        .group_by(MailingList.slug, Subscription.status, Subscription.cadence)
        .order_by(MailingList.slug)
    )
    if list_id is not None:
        stmt = stmt.where(Subscription.list_id == list_id)
    return [(str(a), str(b), str(c), int(n)) for a, b, c, n in (await session.execute(stmt)).all()]


async def next_due_of_list(session: AsyncSession, list_id: int) -> tuple[datetime | None, int]:
    """(earliest next slot, readers due within a day of it) of a list's confirmed readers."""
    first = (
        await session.execute(
            select(func.min(Subscription.next_due_at)).where(
                Subscription.list_id == list_id, Subscription.status == SubscriptionStatus.CONFIRMED
            )
        )
    ).scalar_one_or_none()
    if first is None:
        return None, 0
    n = (
        await session.execute(
            select(func.count())
            .select_from(Subscription)
            .where(
                Subscription.list_id == list_id,
                Subscription.status == SubscriptionStatus.CONFIRMED,
                Subscription.next_due_at < first + timedelta(days=1),
            )
        )
    ).scalar_one()
    return first, int(n)


async def sent_since(session: AsyncSession, since: datetime) -> int:
    """Messages accepted by a relay since a time: the current send rate."""
    stmt = select(func.count()).select_from(Delivery).where(Delivery.sent_at >= since)
    return int((await session.execute(stmt)).scalar_one())


async def sent_times_since(session: AsyncSession, since: datetime) -> list[datetime]:
    """When each message since a time was accepted, for the admin page's sends-per-hour chart."""
    stmt = select(Delivery.sent_at).where(Delivery.sent_at >= since)
    return [t for t in (await session.execute(stmt)).scalars().all() if t is not None]


async def smtp_reply_counts(session: AsyncSession, since: datetime) -> list[tuple[str, int | None, int]]:
    """(relay, SMTP code, deliveries) answered since a time: replies by class and relay for /metrics."""
    stmt = (
        select(Delivery.relay, Delivery.smtp_code, func.count())
        .where(Delivery.relay.is_not(None), Delivery.updated_at >= since)
        .group_by(Delivery.relay, Delivery.smtp_code)
    )
    rows = (await session.execute(stmt)).all()
    return [(str(r), None if c is None else int(c), int(n)) for r, c, n in rows]


async def queue_summary(session: AsyncSession, now: datetime) -> tuple[int, datetime | None]:
    """(outstanding deliveries, due time of the oldest one that is due): queue depth and age."""
    depth = (
        await session.execute(
            select(func.count()).select_from(Delivery).where(Delivery.status.in_(list(OUTSTANDING)))
        )
    ).scalar_one()
    oldest = (
        await session.execute(
            select(func.min(Delivery.next_attempt_at)).where(
                Delivery.status.in_(list(OUTSTANDING)), Delivery.next_attempt_at <= now
            )
        )
    ).scalar_one_or_none()
    return int(depth), oldest


async def inbound_class_counts(
    session: AsyncSession, kinds: Sequence[str], since: datetime
) -> list[tuple[str, str | None, int]]:
    """(event kind, bounce class, events) since a time: bounces by class for /metrics."""
    klass = Event.detail["bounce_class"].as_string()
    stmt = (
        select(Event.kind, klass, func.count())
        .where(Event.kind.in_(kinds), Event.created_at >= since)
        .group_by(Event.kind, klass)
    )
    return [(str(k), c, int(n)) for k, c, n in (await session.execute(stmt)).all()]


async def recent_reader_events(
    session: AsyncSession, kinds: Sequence[str], limit: int
) -> list[tuple[datetime, str, dict[str, Any], str | None]]:
    """(time, kind, detail, reader address) of the latest bounces and unsubscribes, for the admin page."""
    stmt = (
        select(Event.created_at, Event.kind, Event.detail, Subscriber.email)
        .outerjoin(Subscriber, Subscriber.id == Event.subscriber_id)
        .where(Event.kind.in_(kinds))
        .order_by(Event.id.desc())
        .limit(limit)
    )
    return [(t, str(k), dict(d or {}), e) for t, k, d, e in (await session.execute(stmt)).all()]


async def edition_reply_groups(
    session: AsyncSession, edition_id: int
) -> list[tuple[str, int | None, str, int]]:
    """(status, code, reply, deliveries) of an edition's unsuccessful messages, grouped by reply."""
    stmt = (
        select(Delivery.status, Delivery.smtp_code, Delivery.smtp_reply, func.count())
        .where(
            Delivery.edition_id == edition_id,
            Delivery.status.in_([DeliveryStatus.FAILED, DeliveryStatus.DEFERRED, DeliveryStatus.UNKNOWN]),
        )
        .group_by(Delivery.status, Delivery.smtp_code, Delivery.smtp_reply)
        .order_by(func.count().desc())
    )
    return [(str(s), c, str(r or ""), int(n)) for s, c, r, n in (await session.execute(stmt)).all()]


async def edition_send_span(
    session: AsyncSession, edition_id: int
) -> tuple[datetime | None, datetime | None, int]:
    """(first, last, count) of an edition's accepted messages: how fast it went out."""
    stmt = select(func.min(Delivery.sent_at), func.max(Delivery.sent_at), func.count(Delivery.sent_at)).where(
        Delivery.edition_id == edition_id
    )
    first, last, n = (await session.execute(stmt)).one()
    return first, last, int(n)


async def edition_recipients(
    session: AsyncSession, edition_id: int
) -> list[tuple[str, str, int | None, str | None]]:
    """(address, status, code, reply) of every message of an edition: who got it, who bounced, why."""
    stmt = (
        select(Delivery.address, Delivery.status, Delivery.smtp_code, Delivery.smtp_reply)
        .where(Delivery.edition_id == edition_id)
        .order_by(Delivery.address)
    )
    return [(str(a), str(s), c, r) for a, s, c, r in (await session.execute(stmt)).all()]


async def last_edition_of(session: AsyncSession, list_id: int) -> Edition | None:
    """A list's latest digest (not a test send), for `digest lists`."""
    stmt = (
        select(Edition)
        .where(Edition.list_id == list_id, Edition.kind == DeliveryKind.DIGEST)
        .order_by(Edition.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def claim_alert_slot(session: AsyncSession, key: str, now: datetime, window: timedelta) -> bool:
    """True when no alert of this kind went out within the window, shared by every process."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    cutoff = (now - window).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    updated = await session.execute(
        update(Setting).where(Setting.key == key, Setting.value < cutoff).values(value=stamp)
    )
    if updated.rowcount:  # type: ignore[attr-defined]
        return True
    inserted = await session.execute(
        _insert(session, Setting).values(key=key, value=stamp).on_conflict_do_nothing()
    )
    return bool(inserted.rowcount)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- operators: erasure


def erased_email(email_key: str) -> str:
    """The placeholder an erased reader's address becomes: a hash, so imports can still refuse it."""
    import hashlib

    return f"erased-{hashlib.sha256(email_key.encode()).hexdigest()}@invalid"


async def erased_reader(session: AsyncSession, email_key: str) -> bool:
    """Was this address erased on request (so operators may not add it back without new consent)?"""
    return await subscriber_by_email(session, erased_email(email_key)) is not None


async def erase_subscriber(session: AsyncSession, reader: Subscriber, now: datetime) -> int:
    """Replace a reader's personal data by its hash everywhere it is kept; returns deliveries scrubbed."""
    address, marker = reader.email, erased_email(reader.email_key)
    subs = select(Subscription.id).where(Subscription.subscriber_id == reader.id)
    await session.execute(
        update(Subscriber)
        .where(Subscriber.id == reader.id)
        .values(
            email=marker, email_key=marker, name="", status="suppressed", bounce_score=0.0, updated_at=now
        )
    )
    await session.execute(
        update(Subscription)
        .where(Subscription.subscriber_id == reader.id)
        .values(
            status=SubscriptionStatus.UNSUBSCRIBED,
            next_due_at=None,
            unsubscribed_at=func.coalesce(Subscription.unsubscribed_at, now),
            unsubscribe_method=func.coalesce(Subscription.unsubscribe_method, "erased"),
            signup_ip=None,
            signup_user_agent=None,
            signup_source=None,
            signup_referer=None,
            confirm_ip=None,
            confirm_user_agent=None,
        )
    )
    for sub_id in (await session.execute(subs)).scalars().all():
        await session.execute(
            update(Subscription).where(Subscription.id == sub_id).values(token=secrets.token_urlsafe(24))
        )
    await session.execute(
        update(Delivery)
        .where(Delivery.status.in_(list(OUTSTANDING)), Delivery.subscription_id.in_(subs))
        .values(status=DeliveryStatus.SKIPPED, smtp_reply="reader erased", lease_owner=None, updated_at=now)
    )
    scrubbed = await session.execute(
        update(Delivery)
        .where(or_(Delivery.subscription_id.in_(subs), func.lower(Delivery.address) == address.lower()))
        .values(address=marker, smtp_reply=None, body_html=None, body_text=None, subject=None)
    )
    await session.execute(update(Event).where(Event.subscriber_id == reader.id).values(detail={}))
    return int(scrubbed.rowcount)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- operators: retention (prune)


@asynccontextmanager
async def bulk_delete(database: Database) -> AsyncIterator[AsyncSession]:
    """A write transaction for batched deletes. On SQLite, foreign-key actions are switched off for
    it: without an index on events.delivery_id each deleted delivery would scan every event, so the
    caller clears those references itself, once per batch."""
    if not database.is_sqlite:
        async with database.write() as s:
            yield s
        return
    async with database.writer.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.execute("PRAGMA foreign_keys=OFF")
        try:
            async with AsyncSession(bind=conn, expire_on_commit=False) as s, s.begin():
                yield s
        finally:
            await driver.execute("PRAGMA foreign_keys=ON")


async def delete_old_events(session: AsyncSession, before: datetime, keep: Sequence[str], limit: int) -> int:
    """One batch of audit events past retention (oldest first: they sit at the low ids)."""
    ids = (
        select(Event.id)
        .where(Event.created_at < before, Event.kind.not_in(keep))
        .order_by(Event.id)
        .limit(limit)
    )
    found = list((await session.execute(ids)).scalars().all())
    if not found:
        return 0
    await session.execute(delete(Event).where(Event.id.in_(found)))
    return len(found)


async def trim_raw_batch(session: AsyncSession, kinds: Sequence[str], before: datetime, limit: int) -> int:
    """One batch of bounce events whose raw message is past retention: drop the message, keep the facts."""
    stmt = (
        select(Event)
        .where(Event.kind.in_(kinds), Event.created_at < before, Event.detail["raw"].as_string().is_not(None))
        .order_by(Event.id)
        .limit(limit)
    )
    found = (await session.execute(stmt)).scalars().all()
    for e in found:
        detail = {k: v for k, v in (e.detail or {}).items() if k != "raw"}
        detail["raw_trimmed"] = True
        e.detail = detail
    await session.flush()
    return len(found)


async def strip_edition_bodies(session: AsyncSession, before: datetime, note: str, limit: int) -> int:
    """One batch of finished editions past retention: their rendered bodies become a short note."""
    ids = (
        select(Edition.id)
        .where(
            Edition.created_at < before,
            Edition.status.in_([EditionStatus.DONE, EditionStatus.CANCELLED]),
            Edition.html != note,
        )
        .order_by(Edition.id)
        .limit(limit)
    )
    found = list((await session.execute(ids)).scalars().all())
    if found:
        await session.execute(update(Edition).where(Edition.id.in_(found)).values(html=note, text=""))
    return len(found)


async def delete_old_deliveries(session: AsyncSession, before: datetime, limit: int) -> int:
    """One batch of finished deliveries past retention; events that named them keep their facts."""
    final = [s for s in DeliveryStatus if s not in OUTSTANDING]
    ids = (
        select(Delivery.id)
        .where(Delivery.created_at < before, Delivery.status.in_(final))
        .order_by(Delivery.id)
        .limit(limit)
    )
    found = list((await session.execute(ids)).scalars().all())
    if not found:
        return 0
    await session.execute(update(Event).where(Event.delivery_id.in_(found)).values(delivery_id=None))
    await session.execute(delete(Delivery).where(Delivery.id.in_(found)))
    return len(found)


async def policy_rejections_since(session: AsyncSession, since: datetime) -> list[tuple[str, str, int]]:
    """(relay, reply, deliveries) answered 5.7.x since a time: a relay refusing on policy alerts."""
    stmt = (
        select(Delivery.relay, Delivery.smtp_reply, func.count())
        .where(
            Delivery.updated_at >= since,
            Delivery.smtp_code >= 500,
            Delivery.smtp_reply.like("%5.7.%"),
        )
        .group_by(Delivery.relay, Delivery.smtp_reply)
        .order_by(func.count().desc())
    )
    return [(str(r or "?"), str(t or ""), int(n)) for r, t, n in (await session.execute(stmt)).all()]


async def edition_status_counts(session: AsyncSession, edition_id: int) -> dict[str, int]:
    """One edition's deliveries by status, for `digest editions show`."""
    stmt = (
        select(Delivery.status, func.count())
        .where(Delivery.edition_id == edition_id)
        .group_by(Delivery.status)
    )
    return {str(k): int(n) for k, n in (await session.execute(stmt)).all()}
