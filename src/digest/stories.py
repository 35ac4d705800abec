"""Stories as readers see them outside a digest: whose they are, and every new story of an edition.

A source has an internal name that operators use ("seeds", "desk"); readers are shown its
title instead: the config's `title`, else the title its feed gives itself, else the site the
story is on. A digest holds at most `max_articles` stories and says "and N more"; its link opens
the page of every new story of that edition, the ones left out included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from digest import bootstrap, tokens
from digest.display_text import clean, direction_of, host_of, long_date, short_date
from digest.models import Article, Edition, MailingList, topic_choice_slugs
from digest.store import compose as compose_store
from digest.store import reports as reports_store
from digest.store import sources as sources_store


async def source_titles(app: bootstrap.App, s: AsyncSession) -> dict[str, str]:
    """Source name → display title: the config's `title`, else the title the feed gives itself."""
    titles = await sources_store.feed_titles(s)
    titles.update({src.name: src.title for src in app.cfg.sources if src.title})
    return titles


def source_label(source_name: str, titles: Mapping[str, str], url: str | None) -> str:
    """What readers see as a story's source; never the source's internal name."""
    return titles.get(source_name) or host_of(url)


@dataclass(frozen=True)
class Story:
    title: str
    url: str
    source: str
    author: str
    day: str  # "2 Mar 2026", in the list's zone
    summary: str
    direction: str  # "ltr" or "rtl", from the story's own text


@dataclass(frozen=True)
class EditionStories:
    lst: MailingList
    edition: Edition
    day: str  # the edition's day, in the list's zone
    stories: list[Story]
    complete: bool  # False when the link did not say which stories were new: only the digest's own


async def edition_stories(
    app: bootstrap.App, slug: str, edition_id: int, signed_range: str
) -> EditionStories | None:
    """Every new story of an edition (newest first), or None when there is no such edition to show.

    A list that is not public shows its editions only to a link that carries the edition's signed
    range, which only its digests hold.
    """
    found = tokens.parse_stories_range(signed_range, edition_id, app.keys) if signed_range else None
    async with app.db.read() as s:
        lst = await sources_store.list_by_slug(s, slug)
        edition = await reports_store.edition_by_id(s, edition_id) if 0 < edition_id < 2**62 else None
        if lst is None or edition is None or edition.list_id != lst.id:
            return None
        # Unsigned, only a published digest of a public list: never a test send or an unsent edition.
        if found is None and not (lst.public and await reports_store.is_published(s, edition.id)):
            return None
        titles = await source_titles(app, s)
        if found is not None:
            after, upto, since = found
            rows = await compose_store.new_articles_for_list(
                s,
                lst.id,
                after,
                upto,
                datetime.fromtimestamp(since, UTC),
                topic_choice_slugs(edition.topics),
            )
            pairs = [(c.article, c.source_name) for c in rows]
        else:
            pairs = [(a, "") for a in await compose_store.articles_by_ids(s, list(edition.article_ids))]
    zone = ZoneInfo(lst.timezone)
    stories = [_story(app, a, source_label(name, titles, a.url), zone) for a, name in pairs]
    day = long_date(edition.created_at.astimezone(zone).date())
    return EditionStories(lst, edition, day, stories, complete=found is not None)


def _story(app: bootstrap.App, a: Article, source: str, zone: ZoneInfo) -> Story:
    title, summary = clean(a.title), clean(a.summary)
    return Story(
        title=title,
        url=a.url or f"{app.base_url}/articles/{a.id}",
        source=source,
        author=clean(a.author or ""),
        day=short_date(a.published_at.astimezone(zone).date()),
        summary=summary,
        direction=direction_of(title, summary),
    )
