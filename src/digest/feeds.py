"""RSS, Atom and JSON Feed bytes into NewArticles (pure; the bytes and `now` are parameters).

Parsing is lenient where feeds are sloppy (bad bytes, missing dates, duplicate guids: repaired with
a warning) and strict where they are dangerous (XML that declares entities is refused).
"""

from __future__ import annotations

import calendar
import codecs
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import defusedxml.ElementTree
import feedparser

from digest.errors import SourceError
from digest.extract import html_to_text, text_to_html
from digest.source_items import Parsed, SourceItem, build_articles, parse_date

_XML_DECL = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']", re.IGNORECASE)
_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _to_utf8(data: bytes, charset: str | None = None) -> tuple[bytes, bool]:
    """The document re-encoded as UTF-8 and whether bad bytes had to be replaced.

    The encoding is, in this order: a byte-order mark, the charset the server sent with the
    document (RFC 7303: it overrides the XML declaration), the XML declaration, UTF-8.
    feedparser answers one bad byte by re-reading the whole feed as Latin-1, garbling every
    other character, so the bytes are decoded here with replacement instead.
    """
    encoding = "utf-8"
    for bom, bom_encoding in _BOMS:
        if data.startswith(bom):
            data, encoding = data[len(bom) :], bom_encoding
            break
    else:
        declared = _XML_DECL.match(data)
        if charset:
            encoding = charset
        elif declared:
            encoding = declared.group(1).decode("ascii")
    try:
        codecs.lookup(encoding)
    except LookupError:
        return data, False
    try:
        text, repaired = data.decode(encoding), False
    except UnicodeDecodeError:
        text, repaired = data.decode(encoding, errors="replace"), True
    text = re.sub(r"^(\s*<\?xml[^>]*?encoding\s*=\s*[\"'])[^\"']*", r"\g<1>utf-8", text, count=1)
    return _XML_ILLEGAL.sub("", text).encode("utf-8"), repaired


def _media_type(content_type: str | None) -> tuple[str | None, str | None]:
    """(media type, charset) of a Content-Type header."""
    if not content_type:
        return None, None
    media, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value.strip().strip("\"'"):
            charset = value.strip().strip("\"'")
    return media.strip().lower() or None, charset


def _refuse_entities(name: str, data: bytes) -> None:
    root = re.search(rb"<[A-Za-z_:]", data)
    prolog = data[: root.start()] if root else data
    message = (
        f"source {name!r}: refusing XML whose DOCTYPE declares entities "
        "(entity expansion or external entities)"
    )
    if re.search(rb"<!\s*ENTITY", prolog, re.IGNORECASE):
        raise SourceError(message)
    try:
        defusedxml.ElementTree.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except (defusedxml.EntitiesForbidden, defusedxml.ExternalReferenceForbidden) as exc:
        raise SourceError(message) from exc
    except Exception:  # noqa: S110 - malformed XML is feedparser's to judge, leniently
        pass


def parse_feed(
    name: str,
    data: bytes,
    *,
    now: datetime,
    base_url: str | None = None,
    content_type: str | None = None,
) -> Parsed:
    """Articles, refused items and warnings from RSS, Atom or JSON Feed bytes; SourceError when
    the bytes are none of them. `base_url` and `content_type` are what the server said about the
    document (its URL after redirects, and its Content-Type with any charset)."""
    warnings: list[str] = []
    media, charset = _media_type(content_type)
    data, repaired = _to_utf8(data, charset)
    if repaired:
        warnings.append(f"{name}: feed has bytes that are not valid in its encoding; replaced them")
    if data.lstrip().startswith(b"{"):
        title, items = _json_feed_items(name, data, base_url)
    else:
        _refuse_entities(name, data)
        title, items = _feedparser_items(name, data, base_url, media, warnings)
    articles, refused = build_articles(name, items, now, warnings)
    shown = " ".join(html_to_text(title).split())[:200] if title.strip() else ""
    return Parsed(articles, refused, warnings, title=shown or None)


def _feedparser_items(
    name: str, data: bytes, base_url: str | None, media: str | None, warnings: list[str]
) -> tuple[str, list[SourceItem]]:
    """The feed's title and its items."""
    # The bytes are UTF-8 by now, whatever the server said: tell feedparser so, with the media type.
    headers = {"content-type": f"{media or 'application/xml'}; charset=utf-8"}
    if base_url:
        headers["content-location"] = base_url
    # nh3 sanitizes later; feedparser's own pass would unwrap <iframe> and keep its fallback text.
    parsed = feedparser.parse(data, response_headers=headers, sanitize_html=False)
    if not parsed.entries:
        head = data.lstrip()[:200].lower()
        if head.startswith((b"<!doctype html", b"<html")):
            raise SourceError(f"source {name!r}: got an HTML page, not a feed")
        if parsed.version:
            return str(parsed.feed.get("title", "")), []  # a valid feed with nothing in it (yet)
        if parsed.bozo:
            raise SourceError(f"source {name!r}: cannot parse feed: {parsed.get('bozo_exception')}")
        raise SourceError(f"source {name!r}: not an RSS, Atom or JSON feed")
    if parsed.bozo and not isinstance(parsed.get("bozo_exception"), feedparser.CharacterEncodingOverride):
        warnings.append(
            f"{name}: feed is not well-formed ({parsed.get('bozo_exception')}); read it leniently"
        )
    feed_link = parsed.feed.get("link") or base_url
    items = [_feedparser_item(entry, feed_link, index) for index, entry in enumerate(parsed.entries)]
    return str(parsed.feed.get("title", "")), items


def _feedparser_item(entry: Any, feed_link: str | None, index: int) -> SourceItem:
    title = str(entry.get("title", ""))
    title_type = str(entry.get("title_detail", {}).get("type", ""))
    if "html" in title_type:
        title = html_to_text(title)
    contents = [c for c in entry.get("content", []) if c.get("value")]
    detail = max(contents, key=lambda c: len(c["value"])) if contents else entry.get("summary_detail", {})
    body = str(detail.get("value", "") or entry.get("summary", ""))
    if "html" not in str(detail.get("type", "text/html")):
        body = text_to_html(body)
    published = next(
        (
            datetime.fromtimestamp(calendar.timegm(entry[key]), UTC)
            for key in ("published_parsed", "updated_parsed", "created_parsed")
            if entry.get(key)
        ),
        None,
    )
    date_text = entry.get("published") or entry.get("updated")
    if published is None:
        published = parse_date(date_text)  # what feedparser cannot read, such as localized RFC 2822
    link = entry.get("link")
    return SourceItem(
        label=str(entry.get("id") or link or title or f"#{index + 1}"),
        guid=entry.get("id"),
        link=link,
        title=title,
        author=entry.get("author"),
        published=published,
        content_html=body,
        image=_feedparser_image(entry),
        date_text=date_text,
        base=detail.get("base") or link or feed_link,
        categories=tuple(str(t.get("term") or t.get("label") or "") for t in entry.get("tags") or []),
    )


def _feedparser_image(entry: Any) -> str | None:
    for enclosure in entry.get("enclosures", []):
        if str(enclosure.get("type", "")).startswith("image/") and enclosure.get("href"):
            return str(enclosure["href"])
    for media in entry.get("media_content", []):
        kind = f"{media.get('medium', '')} {media.get('type', '')}"
        if "image" in kind and media.get("url"):
            return str(media["url"])
    for thumbnail in entry.get("media_thumbnail", []):
        if thumbnail.get("url"):
            return str(thumbnail["url"])
    return None


def _json_feed_items(name: str, data: bytes, base_url: str | None) -> tuple[str, list[SourceItem]]:
    """The feed's title and its items."""
    try:
        feed = json.loads(data)
    except ValueError as exc:
        raise SourceError(f"source {name!r}: not valid JSON: {exc}") from exc
    if (
        not isinstance(feed, dict)
        or "jsonfeed.org/version/1" not in str(feed.get("version", ""))
        or not isinstance(feed.get("items"), list)
    ):
        raise SourceError(f"source {name!r}: JSON but not a JSON Feed 1.x (no version or items)")
    base = _text(feed.get("home_page_url")) or _text(feed.get("feed_url")) or base_url
    items = [
        _json_feed_item(item, base, index)
        for index, item in enumerate(feed["items"])
        if isinstance(item, dict)
    ]
    return _text(feed.get("title")) or "", items


def _json_feed_item(item: dict[str, Any], base: str | None, index: int) -> SourceItem:
    if _text(item.get("content_html")):
        body = _text(item.get("content_html")) or ""
    else:
        body = text_to_html(_text(item.get("content_text")) or _text(item.get("summary")) or "")
    authors = item.get("authors")
    if not isinstance(authors, list):
        authors = [item.get("author")]  # JSON Feed 1.0 had one author object
    author = next((_text(a.get("name")) for a in authors if isinstance(a, dict) and a.get("name")), None)
    guid = item.get("id")
    link = _text(item.get("url")) or _text(item.get("external_url"))
    date_text = _text(item.get("date_published")) or _text(item.get("date_modified"))
    return SourceItem(
        label=str(guid or link or f"#{index + 1}"),
        guid=str(guid) if isinstance(guid, str | int) and str(guid).strip() else None,
        link=link,
        title=_text(item.get("title")) or "",
        author=author,
        published=parse_date(date_text),
        date_text=date_text,
        content_html=body,
        image=_text(item.get("image")) or _text(item.get("banner_image")),
        base=urljoin(base or "", link) if link else base,
        summary=_text(item.get("summary")),
        categories=tuple(t for t in item.get("tags") or [] if isinstance(t, str)),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None
