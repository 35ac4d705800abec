"""Sources, lists and articles: config sync, stored articles and their sequence numbers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from digest.models import (
    Article,
    ArticleSource,
    ListSource,
    MailingList,
    NewArticle,
    Source,
)
from digest.store import is_postgres

# Any constant works; it only has to be the same in every process that assigns seq values.
SEQ_LOCK_KEY = 7_141_957


async def lock_config_sync(session: AsyncSession) -> None:
    """Processes starting together (several workers) sync the config one after another."""
    if is_postgres(session):
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


async def lock_seq(session: AsyncSession) -> int:
    """Serialize seq assignment so seq values become visible in commit order; returns the last seq.

    SQLite already holds its write lock (BEGIN IMMEDIATE); PostgreSQL takes a transaction-scoped
    advisory lock, released at commit, so a composer never sees seq 102 committed before 101.
    """
    if is_postgres(session):
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
                content=item.content_html,
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
