"""Sources, lists and articles: config sync, stored articles and their sequence numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    delete,
    func,
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
    Setting,
    Source,
)
from digest.store import dialect_insert, is_postgres

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


@dataclass
class Stored:
    """What storing one fetch's items did, item by item."""

    new: int = 0  # stories not seen before
    updated: int = 0  # known items whose title, text, link or image changed
    known: int = 0  # known items, unchanged
    linked: int = 0  # exact copies of a story stored from another source, linked to it
    article_ids: list[int] = field(default_factory=list)  # the articles new, updated or linked


async def store_articles(
    session: AsyncSession,
    source_id: int,
    items: Sequence[NewArticle],
    now: datetime,
    *,
    dry_run: bool = False,
) -> Stored:
    """Store a source's items by their identity within the source (`NewArticle.guid`).

    An item the source showed before is known (its article updated if it changed). An exact copy
    of an item stored from another source (the same `identity_url`: its link with the fragment,
    or a guid that is a URL) is linked to that article. Anything else is a new article, even when
    its title, text or canonical URL equal another's: two items are the same story only by
    identity, never by resemblance. Each new sighting gets the next seq. `dry_run` counts what
    would happen (for `digest sources check`) and writes nothing.
    """
    last_seq = await lock_seq(session)
    done = Stored()
    for item in items:
        article = await _known_article(session, source_id, item, rekey=not dry_run)
        if article is not None:
            if not _changed(article, item):
                done.known += 1
                continue
            done.updated += 1
            if not dry_run:
                _copy_into(article, item)
                done.article_ids.append(article.id)
            continue
        article = await _copy_elsewhere(session, source_id, item)
        if dry_run:
            done.new, done.linked = done.new + (article is None), done.linked + (article is not None)
            continue
        if article is None:
            article = Article(created_at=now, guid=item.guid, published_at=item.published_at)
            _copy_into(article, item)
            session.add(article)
            await session.flush()
            done.new += 1
        else:
            done.linked += 1
        done.article_ids.append(article.id)
        last_seq += 1
        session.add(
            ArticleSource(
                article_id=article.id, source_id=source_id, guid=item.guid, seq=last_seq, ingested_at=now
            )
        )
        await session.flush()
    return done


async def _known_article(
    session: AsyncSession, source_id: int, item: NewArticle, *, rekey: bool
) -> Article | None:
    """The article this source showed under the item's identity, if any. Keys written before
    identities kept fragments and content hashes are re-keyed here, the first time the source
    shows the item again, and only when the stored content is the item's."""
    found = await session.execute(
        select(Article)
        .join(ArticleSource, ArticleSource.article_id == Article.id)
        .where(ArticleSource.source_id == source_id, ArticleSource.guid == item.guid)
    )
    article = found.scalars().first()
    if article is not None:
        return article
    for legacy in _legacy_keys(item):
        found_sighting = await session.execute(
            select(ArticleSource)
            .join(Article, ArticleSource.article_id == Article.id)
            .where(
                ArticleSource.source_id == source_id,
                ArticleSource.guid == legacy,
                Article.fingerprint == item.fingerprint,
            )
        )
        sighting = found_sighting.scalars().first()
        if sighting is not None:
            if rekey:
                sighting.guid = item.guid
            return await session.get(Article, sighting.article_id)
    return None


def _legacy_keys(item: NewArticle) -> list[str]:
    """Keys the item had before revision 0003: its canonical URL where the key is now the link
    with a fragment, and `fingerprint:` where it is now a content hash."""
    if item.guid.startswith("content:"):
        return [f"fingerprint:{item.fingerprint}"]
    if item.url and item.guid == item.identity_url and item.guid != item.url:
        return [item.url]
    return []


async def _copy_elsewhere(session: AsyncSession, source_id: int, item: NewArticle) -> Article | None:
    """The article another source stored this exact item as (same identity URL), if any."""
    if item.identity_url is None:
        return None
    mine = select(ArticleSource.article_id).where(ArticleSource.source_id == source_id)
    found = await session.execute(
        select(Article)
        .where(Article.identity_url == item.identity_url, Article.id.not_in(mine))
        .order_by(Article.id)
        .limit(1)
    )
    return found.scalars().first()


def _changed(article: Article, item: NewArticle) -> bool:
    return (article.fingerprint, article.title, article.url, article.image_url, article.categories or []) != (
        item.fingerprint,
        item.title,
        item.url,
        item.image_url,
        list(item.categories),
    )


def _copy_into(article: Article, item: NewArticle) -> None:
    """What a source may change about a story; its date stays the one it was first stored with
    (an undated item is dated at each fetch)."""
    article.url, article.identity_url = item.url, item.identity_url
    article.title, article.author = item.title, item.author
    article.summary, article.content, article.image_url = item.summary, item.content_html, item.image_url
    article.fingerprint = item.fingerprint
    article.categories = list(item.categories) or None


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


# A feed's title is learned at each fetch and read by every composer: it lives beside the other
# values processes share, one row per source, so the sources table keeps its shape.
_FEED_TITLE = "feed-title:"


async def set_feed_title(session: AsyncSession, source_name: str, title: str) -> None:
    key = _FEED_TITLE + source_name
    found = await session.get(Setting, key)
    if found is None:
        await session.execute(
            dialect_insert(session, Setting).values(key=key, value=title).on_conflict_do_nothing()
        )
    elif found.value != title:
        found.value = title


async def feed_titles(session: AsyncSession) -> dict[str, str]:
    """Source name → the title its feed gives itself, for every feed that gave one."""
    rows = await session.execute(select(Setting).where(Setting.key.startswith(_FEED_TITLE, autoescape=True)))
    return {row.key.removeprefix(_FEED_TITLE): row.value for row in rows.scalars()}
