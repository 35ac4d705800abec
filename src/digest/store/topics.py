"""Topics in the database: the config's topics per list, article↔topic links, readers' choices.

A reader's choice is kept on the subscription as its topics' slugs, sorted and comma-joined
(`Subscription.topics`; NULL is every topic), so readers with one choice are one GROUP BY away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, ColumnElement, delete, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from digest.models import (
    Article,
    ArticleSource,
    ArticleTopic,
    Event,
    ListSource,
    Source,
    Subscription,
    SubscriptionStatus,
    Topic,
    UTCDateTime,
    topic_choice_key,
    topic_choice_slugs,
)


@dataclass(frozen=True)
class TopicSpec:
    slug: str
    name: str
    description: str
    rest: bool


def _holds(slug: str) -> ColumnElement[bool]:
    """Subscriptions whose stored choice names `slug` (commas around it so `bus` is not `buses`)."""
    return (literal(",") + Subscription.topics + literal(",")).like(f"%,{slug},%")


async def sync_topics(
    session: AsyncSession, list_id: int, specs: Sequence[TopicSpec], now: datetime
) -> list[str]:
    """Config is the truth for topics: create or update them by slug (a new name keeps readers'
    choices); a topic no longer configured is deleted and dropped from readers' choices, with a
    `topic_removed` event for each reader who had chosen it. Returns the removed slugs."""
    rows = {
        t.slug: t for t in (await session.execute(select(Topic).where(Topic.list_id == list_id))).scalars()
    }
    for position, spec in enumerate(specs):
        row = rows.get(spec.slug)
        if row is None:
            session.add(
                Topic(
                    list_id=list_id,
                    slug=spec.slug,
                    name=spec.name,
                    description=spec.description,
                    position=position,
                    rest=spec.rest,
                )
            )
        elif (row.name, row.description, row.position, row.rest) != (
            spec.name,
            spec.description,
            position,
            spec.rest,
        ):
            row.name, row.description, row.position, row.rest = (
                spec.name,
                spec.description,
                position,
                spec.rest,
            )
    removed = sorted(set(rows) - {s.slug for s in specs})
    for slug in removed:
        await _drop_from_choices(session, list_id, slug, now)
        await session.delete(rows[slug])
    await session.flush()
    return removed


async def _drop_from_choices(session: AsyncSession, list_id: int, slug: str, now: datetime) -> None:
    where = (Subscription.list_id == list_id, Subscription.topics.is_not(None), _holds(slug))
    keys = (await session.execute(select(Subscription.topics).where(*where).distinct())).scalars().all()
    if not keys:
        return
    detail = {"topic": slug, "reason": "the list no longer offers it"}
    await session.execute(
        insert(Event).from_select(
            ["subscriber_id", "subscription_id", "kind", "detail", "created_at"],
            select(
                Subscription.subscriber_id,
                Subscription.id,
                literal("topic_removed"),
                literal(detail, JSON()),
                literal(now, UTCDateTime()),
            ).where(*where),
        )
    )
    for key in keys:
        left = [s for s in topic_choice_slugs(key) or [] if s != slug]
        await session.execute(
            update(Subscription)
            .where(Subscription.list_id == list_id, Subscription.topics == key)
            .values(topics=topic_choice_key(left) if left else None)
        )


async def list_topics(session: AsyncSession, list_id: int) -> list[Topic]:
    stmt = select(Topic).where(Topic.list_id == list_id).order_by(Topic.position, Topic.id)
    return list((await session.execute(stmt)).scalars())


@dataclass(frozen=True)
class ArticleFacts:
    """What topic rules look at."""

    id: int
    title: str
    summary: str
    categories: tuple[str, ...]
    sources: frozenset[str]


async def article_facts(session: AsyncSession, article_ids: Sequence[int]) -> list[ArticleFacts]:
    if not article_ids:
        return []
    names: dict[int, set[str]] = {}
    sightings = (
        select(ArticleSource.article_id, Source.name)
        .join(Source, Source.id == ArticleSource.source_id)
        .where(ArticleSource.article_id.in_(article_ids))
    )
    for article_id, name in (await session.execute(sightings)).all():
        names.setdefault(int(article_id), set()).add(name)
    rows = await session.execute(
        select(Article.id, Article.title, Article.summary, Article.categories).where(
            Article.id.in_(article_ids)
        )
    )
    return [
        ArticleFacts(int(i), title, summary, tuple(categories or ()), frozenset(names.get(int(i), ())))
        for i, title, summary, categories in rows.all()
    ]


async def recent_article_ids(session: AsyncSession, list_id: int, since: datetime) -> list[int]:
    """The list's articles published since `since` (what a rematch looks at)."""
    stmt = (
        select(ArticleSource.article_id)
        .join(ListSource, ListSource.source_id == ArticleSource.source_id)
        .join(Article, Article.id == ArticleSource.article_id)
        .where(ListSource.list_id == list_id, Article.published_at >= since)
        .distinct()
    )
    return sorted(int(i) for i in (await session.execute(stmt)).scalars())


async def lists_of_articles(session: AsyncSession, article_ids: Sequence[int]) -> list[int]:
    """The lists any of these articles reaches through its sources."""
    stmt = (
        select(ListSource.list_id)
        .join(ArticleSource, ArticleSource.source_id == ListSource.source_id)
        .where(ArticleSource.article_id.in_(article_ids))
        .distinct()
    )
    return [int(i) for i in (await session.execute(stmt)).scalars()]


async def current_links(
    session: AsyncSession, topic_ids: Sequence[int], article_ids: Sequence[int]
) -> set[tuple[int, int]]:
    stmt = select(ArticleTopic.article_id, ArticleTopic.topic_id).where(
        ArticleTopic.topic_id.in_(topic_ids), ArticleTopic.article_id.in_(article_ids)
    )
    return {(int(a), int(t)) for a, t in (await session.execute(stmt)).all()}


async def replace_links(
    session: AsyncSession,
    topic_ids: Sequence[int],
    article_ids: Sequence[int],
    links: Iterable[tuple[int, int]],
) -> None:
    """Make these articles' links to these topics exactly `links` ((article, topic) pairs)."""
    if not topic_ids or not article_ids:
        return
    for start in range(0, len(article_ids), 500):
        chunk = article_ids[start : start + 500]
        await session.execute(
            delete(ArticleTopic).where(
                ArticleTopic.topic_id.in_(topic_ids), ArticleTopic.article_id.in_(chunk)
            )
        )
    rows = [{"article_id": a, "topic_id": t} for a, t in sorted(set(links))]
    if rows:
        await session.execute(insert(ArticleTopic), rows)


async def set_choice(session: AsyncSession, subscription_id: int, key: str | None) -> None:
    await session.execute(update(Subscription).where(Subscription.id == subscription_id).values(topics=key))


async def topic_reader_counts(session: AsyncSession, list_id: int, slugs: Sequence[str]) -> dict[str, int]:
    """Confirmed readers per topic (a reader with every topic counts in each): one GROUP BY over
    the readers' distinct choices, served by ix_subscriptions_topics."""
    stmt = (
        select(Subscription.topics, func.count())
        .where(Subscription.list_id == list_id, Subscription.status == SubscriptionStatus.CONFIRMED)
        .group_by(Subscription.topics)
    )
    out = dict.fromkeys(slugs, 0)
    for key, n in (await session.execute(stmt)).all():
        chosen = topic_choice_slugs(key)
        for slug in slugs:
            if chosen is None or slug in chosen:
                out[slug] += int(n)
    return out


async def topic_article_counts(
    session: AsyncSession, topic_ids: Sequence[int], since: datetime
) -> Mapping[int, int]:
    """Articles published since `since` matched per topic."""
    if not topic_ids:
        return {}
    stmt = (
        select(ArticleTopic.topic_id, func.count())
        .join(Article, Article.id == ArticleTopic.article_id)
        .where(ArticleTopic.topic_id.in_(topic_ids), Article.published_at >= since)
        .group_by(ArticleTopic.topic_id)
    )
    return {int(t): int(n) for t, n in (await session.execute(stmt)).all()}


async def article_topic_slugs(
    session: AsyncSession, list_id: int, article_ids: Sequence[int]
) -> dict[int, list[str]]:
    """Each article's topics in the list, in the list's order of topics."""
    if not article_ids:
        return {}
    stmt = (
        select(ArticleTopic.article_id, Topic.slug)
        .join(Topic, Topic.id == ArticleTopic.topic_id)
        .where(Topic.list_id == list_id, ArticleTopic.article_id.in_(article_ids))
        .order_by(Topic.position, Topic.id)
    )
    out: dict[int, list[str]] = {}
    for article_id, slug in (await session.execute(stmt)).all():
        out.setdefault(int(article_id), []).append(slug)
    return out
