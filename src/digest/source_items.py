"""What a source says about one article, and the NewArticle made of it (pure; `now` is a parameter).

Feeds and article files describe articles loosely; both become NewArticles here, the same way:
boilerplate trimmed, HTML sanitized, the URL made canonical, a date that is missing or in the
future replaced by the ingest time, and a repeated guid dropped, each with a warning.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
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
class Parsed:
    """What one fetch of a source gave: its articles, the items refused (one line each, saying
    why) and warnings about the source as a whole."""

    articles: list[NewArticle]
    refused: list[str]
    warnings: list[str]
    title: str | None = None  # the feed's own name for itself ("Harbour Town Gazette"), if it gives one


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
    categories: tuple[str, ...] = ()  # the source's own categories or tags


def parse_date(value: str | None) -> datetime | None:
    """An aware UTC datetime from ISO 8601 or RFC 2822 text, including RFC 2822 written with the
    day and month names of another language ("Seg, 24 Set 2018 19:42:40 -0300"), as feeds in
    Portuguese, Spanish, French, German, Italian and Dutch often are; naive values are UTC."""
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
            parsed = _localized_rfc2822(value)
            if parsed is None:
                return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# Month abbreviations in the languages feeds are most often written in, accents folded away.
_MONTHS = {
    **dict.fromkeys(["jan", "ene", "gen", "janv"], 1),
    **dict.fromkeys(["feb", "fev", "fevr"], 2),
    **dict.fromkeys(["mar", "mrt", "mars"], 3),
    **dict.fromkeys(["apr", "abr", "avr"], 4),
    **dict.fromkeys(["may", "mai", "mag", "mei"], 5),
    **dict.fromkeys(["jun", "giu", "juin"], 6),
    **dict.fromkeys(["jul", "lug", "juil"], 7),
    **dict.fromkeys(["aug", "ago", "aou"], 8),
    **dict.fromkeys(["sep", "set", "sept"], 9),
    **dict.fromkeys(["oct", "out", "okt", "ott"], 10),
    **dict.fromkeys(["nov"], 11),
    **dict.fromkeys(["dec", "dez", "dic"], 12),
}
_RFC2822_LIKE = re.compile(
    r"^(?:[^\W\d_]+\.?,?\s+)?(\d{1,2})\s+([^\W\d_]+)\.?\s+(\d{4})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?"
    r"\s*(Z|UTC?|GMT|[+-]\d{2}:?\d{2})?\s*$"
)


def _localized_rfc2822(value: str) -> datetime | None:
    match = _RFC2822_LIKE.match(value)
    if match is None:
        return None
    day, month_name, year, hour, minute, second, zone = match.groups()
    folded = unicodedata.normalize("NFKD", month_name.lower()).encode("ascii", "ignore").decode()
    month = _MONTHS.get(folded[:4]) or _MONTHS.get(folded[:3])
    if month is None:
        return None
    offset = timedelta(0)
    if zone and zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        offset = -offset if zone[0] == "-" else offset
    try:
        return datetime(
            int(year), month, int(day), int(hour), int(minute), int(second or 0), tzinfo=timezone(offset)
        )
    except ValueError:
        return None


def build_articles(
    name: str, items: Iterable[SourceItem], now: datetime, warnings: list[str], *, warn_undated: bool = True
) -> tuple[list[NewArticle], list[str]]:
    """NewArticles in the items' order, and one line per item refused (empty, or a second item
    with the identity of an earlier one). Date problems are summed up in one warning each per
    fetch, so a feed without dates says so once, not once per item."""
    articles: list[NewArticle] = []
    refused: list[str] = []
    seen: set[str] = set()
    undated: list[str] = []
    unreadable: list[str] = []
    future: list[str] = []
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
            categories=item.categories,
        )
        if not (item.title.strip() or article.url or article.image_url or html_to_text(article.content_html)):
            refused.append(f"{name}: item {item.label}: nothing to show (no title, text, link or image)")
            continue
        if article.guid in seen:
            refused.append(f"{name}: item {item.label}: the same id as an earlier item ({article.guid!r})")
            continue
        seen.add(article.guid)
        if item.published is None and item.date_text:
            unreadable.append(item.date_text)
        elif item.published is None:
            undated.append(item.label)
        elif item.published > now:
            future.append(item.label)
        articles.append(article)
    if unreadable:
        warnings.append(
            f"{name}: {len(unreadable)} item(s) with an unreadable date (such as {unreadable[0]!r}); "
            "dated at the ingest time"
        )
    if undated and warn_undated:
        warnings.append(f"{name}: {len(undated)} item(s) without a date; dated at the ingest time")
    if future:
        warnings.append(f"{name}: {len(future)} item(s) dated in the future; dated at the ingest time")
    return articles, refused


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
    categories: Iterable[str] = (),
) -> NewArticle:
    """One article as it is stored, from a feed, a directory or the operator API alike.

    `published` is aware; a missing or future one becomes `now`. `base` resolves a relative `link`
    and the content's relative URLs. With neither title nor text, the title is `untitled`.

    The identity (`guid` of the result) is, in this order: the source's own guid or id; the link,
    fragment kept; a hash of the content, media and given date (`content_key`).
    """
    url = canonical_url(link, base) if link else None
    link_identity = canonical_url(link, base, keep_fragment=True) if link else None
    guid = clean_line(guid or "", 1000)
    guid_identity = (
        canonical_url(guid, keep_fragment=True) if guid.startswith(("http://", "https://")) else None
    )
    base_url = absolute_url(link, base) or absolute_url(base)
    content = sanitize_html(trim_boilerplate_html(content_html), base_url=base_url)
    if content and not _BLOCK_START.search(content):
        content = f"<p>{content}</p>"
    text = html_to_text(content)
    title = clean_line(title) or clean_line(text, 80) or untitled
    digest_value = fingerprint(title, text)
    published_given = published
    published = published if published is not None and published <= now else now
    author = clean_line(author, 200) if author else None
    image_url = absolute_url(image, base_url) or _first_image(content)
    return NewArticle(
        guid=guid or link_identity or content_key(title, text, image_url, published_given),
        url=url,
        title=title,
        author=author or None,
        published_at=published,
        summary=summarize(summary or text),
        content_html=content,
        image_url=image_url,
        fingerprint=digest_value,
        identity_url=link_identity or guid_identity,
        categories=clean_categories(categories),
    )


def clean_categories(values: Iterable[str]) -> tuple[str, ...]:
    """A source's categories as stored: one line each, at most 30 of 100 characters, no repeats."""
    out: list[str] = []
    for value in values:
        line = clean_line(value, 100)
        if line and line not in out:
            out.append(line)
    return tuple(out[:30])


def content_key(title: str, text: str, image_url: str | None, published: datetime | None) -> str:
    """The identity of an item with neither guid nor link: everything it shows, its media and the
    date its source gave (never the ingest time, which changes at every fetch). Two status
    updates that both say "Up" differ by their date; two image posts by their image."""
    basis = "\x1f".join([title, text, image_url or "", published.isoformat() if published else ""])
    return "content:" + hashlib.sha256(basis.encode("utf-8", "surrogatepass")).hexdigest()


def _first_image(content_html: str) -> str | None:
    if "<img" not in content_html:
        return None
    for img in parse_fragment(content_html).iter("img"):
        src = absolute_url(img.get("src"))
        if src:
            return src
    return None
