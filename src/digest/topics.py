"""Topics: a list's subjects, which articles belong to each, and which ones a reader chose.

Articles are matched at ingest (and again by `digest topics rematch` after the rules change), and
the matches stored as links, so composing a reader's digest is a join, never a loop over readers.
A reader's choice defaults to every topic; choosing is recorded in their events history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from digest import topic_rules
from digest.bootstrap import App
from digest.config import ListConfig
from digest.errors import UsageError
from digest.models import MailingList, topic_choice, topic_choice_slugs
from digest.store import readers as readers_store
from digest.store import reports as reports_store
from digest.store import topics as topics_store


def list_config(app: App, slug: str) -> ListConfig | None:
    return next((lst for lst in app.cfg.lists if lst.slug == slug), None)


def rules(lst: ListConfig) -> list[topic_rules.TopicRule]:
    return [
        topic_rules.compile_rule(
            t.slug, sources=t.sources, categories=t.categories, keywords=t.keywords, rest=t.rest
        )
        for t in lst.topics
    ]


def parse_choice(lst: ListConfig, given: str | Sequence[str] | None) -> str | None:
    """A reader's choice from a comma-separated string or a list of slugs, as stored; None (or an
    empty choice, or every topic) is every topic. An unknown slug is a UsageError naming the topics."""
    if given is None:
        return None
    slugs = [s.strip() for s in (given.split(",") if isinstance(given, str) else given) if s.strip()]
    if not slugs:
        return None
    offered = [t.slug for t in lst.topics]
    if not offered:
        raise UsageError(f"list {lst.slug} offers no topics")
    unknown = [s for s in slugs if s not in offered]
    if unknown:
        raise UsageError(f"list {lst.slug} has no topic {unknown[0]!r} (its topics: {', '.join(offered)})")
    return topic_choice(slugs, offered)


async def match_articles(app: App, s: AsyncSession, article_ids: Sequence[int]) -> None:
    """Link these articles to the topics they match, in every list they reach (inside the
    caller's transaction: an ingest stores its articles and their topics together)."""
    if not article_ids:
        return
    facts = await topics_store.article_facts(s, article_ids)
    for list_id in await topics_store.lists_of_articles(s, article_ids):
        await _link(app, s, list_id, facts)


async def _link(
    app: App, s: AsyncSession, list_id: int, facts: Sequence[topics_store.ArticleFacts]
) -> dict[tuple[int, int], bool]:
    """Store the links of `facts` to the list's topics; returns what changed ((article, topic) →
    added or removed)."""
    lst_row = await reports_store.list_by_id(s, list_id)
    cfg = list_config(app, lst_row.slug) if lst_row is not None else None
    topics = await topics_store.list_topics(s, list_id)
    if cfg is None or not topics:
        return {}
    ids = {t.slug: t.id for t in topics}
    compiled = [r for r in rules(cfg) if r.slug in ids]
    links = {
        (f.id, ids[slug])
        for f in facts
        for slug in topic_rules.match(compiled, f.sources, f.categories, f.title, f.summary)
    }
    article_ids = [f.id for f in facts]
    before = await topics_store.current_links(s, list(ids.values()), article_ids)
    changed = dict.fromkeys(links - before, True) | dict.fromkeys(before - links, False)
    if changed:
        await topics_store.replace_links(s, list(ids.values()), article_ids, links)
    return changed


@dataclass
class Rematch:
    """What re-matching a list's recent articles changes (or changed, when applied)."""

    list_slug: str
    articles: int = 0
    added: list[tuple[int, str]] = field(default_factory=list)  # (article id, topic slug)
    removed: list[tuple[int, str]] = field(default_factory=list)
    applied: bool = False


async def rematch(app: App, lst: MailingList, now: datetime, *, apply: bool) -> Rematch:
    """Match the list's articles within its `max_age` against the current rules; store the result
    only with `apply` (a dry run by default, like import)."""
    report = Rematch(lst.slug, applied=apply)
    async with app.db.write() as s:
        ids = await topics_store.recent_article_ids(s, lst.id, now - timedelta(seconds=lst.max_age_seconds))
        report.articles = len(ids)
        slugs = {t.id: t.slug for t in await topics_store.list_topics(s, lst.id)}
        changed = await _link(app, s, lst.id, await topics_store.article_facts(s, ids))
        for (article_id, topic_id), added in sorted(changed.items()):
            (report.added if added else report.removed).append((article_id, slugs[topic_id]))
        if not apply:
            await s.rollback()
    return report


async def choose(
    app: App,
    subscription_id: int,
    lst: ListConfig,
    given: str | Sequence[str] | None,
    now: datetime,
    method: str,
) -> str | None:
    """Set a reader's topics and record the choice in their history; returns the stored key."""
    key = parse_choice(lst, given)
    async with app.db.write() as s:
        await record_choice(s, subscription_id, key, now, method)
    return key


async def record_choice(
    s: AsyncSession, subscription_id: int, key: str | None, now: datetime, method: str
) -> None:
    sub = await readers_store.subscription_by_id(s, subscription_id)
    if sub is None or sub.topics == key:
        return
    await topics_store.set_choice(s, subscription_id, key)
    await readers_store.add_event(
        s,
        "topics_chosen",
        now,
        subscriber_id=sub.subscriber_id,
        subscription_id=sub.id,
        topics=topic_choice_slugs(key) or "all",
        method=method,
    )
