"""What a source says about one article, and the NewArticle made of it (pure; `now` is a parameter).

Feeds and article files describe articles loosely; both become NewArticles here, the same way:
boilerplate trimmed, HTML sanitized, the URL made canonical, a date that is missing or in the
future replaced by the ingest time, and a repeated guid dropped, each with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from digest.extract import (
    absolute_url,
    canonical_url,
    clean_line,
    fingerprint,
    html_to_text,
    parse_fragment,
    sanitize_html,
    summarize,
    trim_boilerplate_html,
)
from digest.models import NewArticle


@dataclass(frozen=True)
class SourceItem:
    """One article as a source describes it, before normalization."""

    label: str
    guid: str | None
    link: str | None
    title: str
    author: str | None
    published: datetime | None
    content_html: str
    image: str | None = None
    base: str | None = None
    summary: str | None = None
    date_text: str | None = None


def parse_date(value: str | None) -> datetime | None:
    """An aware UTC datetime from ISO 8601 or RFC 2822 text; naive values are taken as UTC."""
    if not value or not value.strip():
        return None
    value = value.strip().strip("\"'")
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def build_articles(
    name: str, items: Iterable[SourceItem], now: datetime, warnings: list[str], *, warn_undated: bool = True
) -> list[NewArticle]:
    """NewArticles in the items' order, the first of each guid kept; warnings are appended."""
    articles: list[NewArticle] = []
    seen: set[str] = set()
    for item in items:
        article = normalize_article(
            guid=item.guid,
            link=item.link,
            title=item.title,
            content_html=item.content_html,
            now=now,
            author=item.author,
            published=item.published,
            summary=item.summary,
            image=item.image,
            base=item.base,
        )
        if article.guid in seen:
            warnings.append(f"{name}: item {item.label}: duplicate guid {article.guid!r}; kept the first")
            continue
        seen.add(article.guid)
        if item.published is None and item.date_text:
            warnings.append(
                f"{name}: item {item.label}: unreadable date {item.date_text!r}; using the ingest time"
            )
        elif item.published is None:
            if warn_undated:
                warnings.append(f"{name}: item {item.label}: no date; using the ingest time")
        elif item.published > now:
            warnings.append(f"{name}: item {item.label}: dated in the future; using the ingest time")
        articles.append(article)
    return articles


_BLOCK_START = re.compile(r"<(?:p|ul|ol|h[2-4]|blockquote|pre|figure)\b")


def normalize_article(
    *,
    guid: str | None,
    link: str | None,
    title: str,
    content_html: str,
    now: datetime,
    author: str | None = None,
    published: datetime | None = None,
    summary: str | None = None,
    image: str | None = None,
    base: str | None = None,
    untitled: str = "Untitled",
) -> NewArticle:
    """One article as it is stored, from a feed, a directory or the operator API alike.

    `published` is aware; a missing or future one becomes `now`. `base` resolves a relative `link`
    and the content's relative URLs. With neither title nor text, the title is `untitled`.
    """
    url = canonical_url(link, base) if link else None
    base_url = absolute_url(link, base) or absolute_url(base)
    content = sanitize_html(trim_boilerplate_html(content_html), base_url=base_url)
    if content and not _BLOCK_START.search(content):
        content = f"<p>{content}</p>"
    text = html_to_text(content)
    title = clean_line(title) or clean_line(text, 80) or untitled
    digest_value = fingerprint(title, text)
    published = published if published is not None and published <= now else now
    author = clean_line(author, 200) if author else None
    return NewArticle(
        guid=clean_line(guid or "", 1000) or url or f"fingerprint:{digest_value}",
        url=url,
        title=title,
        author=author or None,
        published_at=published,
        summary=summarize(summary or text),
        content_html=content,
        image_url=absolute_url(image, base_url) or _first_image(content),
        fingerprint=digest_value,
    )


def _first_image(content_html: str) -> str | None:
    if "<img" not in content_html:
        return None
    for img in parse_fragment(content_html).iter("img"):
        src = absolute_url(img.get("src"))
        if src:
            return src
    return None
