"""Fetching and parsing sources: the I/O edge that turns feeds and article files into ParsedArticles.

Feeds come over HTTP (with a timeout, a size cap, a redirect cap and conditional GET), from
file:// URLs or plain paths; directories hold .txt, .md and .html articles. Parsing is lenient
where feeds are sloppy (bad bytes, missing dates, duplicate guids: repaired with a warning) and
strict where they are dangerous (XML that declares entities is refused). Every article leaves
here with its boilerplate trimmed and its HTML sanitized.
"""

from __future__ import annotations

import asyncio
import calendar
import codecs
import html as html_lib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import defusedxml.ElementTree
import feedparser
import httpx
import lxml.html
from markdown_it import MarkdownIt

from digest.errors import SourceError
from digest.extract import (
    absolute_url,
    canonical_url,
    clean_line,
    fingerprint,
    html_to_text,
    parse_fragment,
    sanitize_html,
    summarize,
    text_to_html,
    trim_boilerplate_html,
)

USER_AGENT = "digest/0.1 (+self-hosted newsletter digest)"
_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/json;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.1"
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class ParsedArticle:
    guid: str
    url: str | None
    title: str
    author: str | None
    published_at: datetime
    summary: str
    content_html: str
    image_url: str | None
    fingerprint: str


@dataclass(frozen=True)
class FetchLimits:
    timeout: float = 20.0
    max_bytes: int = 5_000_000
    max_redirects: int = 5


@dataclass(frozen=True)
class FetchResult:
    articles: list[ParsedArticle]
    etag: str | None
    last_modified: str | None
    not_modified: bool
    warnings: list[str]


@dataclass(frozen=True)
class _Item:
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


@dataclass(frozen=True)
class _Download:
    body: bytes
    url: str | None
    etag: str | None
    last_modified: str | None
    not_modified: bool = False


async def fetch_source(
    name: str,
    kind: str,
    location: str,
    *,
    now: datetime,
    etag: str | None = None,
    last_modified: str | None = None,
    limits: FetchLimits = FetchLimits(),
    client: httpx.AsyncClient | None = None,
) -> FetchResult:
    """Fetch and parse one source; raises SourceError naming the source when it cannot."""
    if kind == "directory":
        articles, warnings = await asyncio.to_thread(read_directory, name, Path(location), now, limits)
        return FetchResult(articles, None, None, False, warnings)
    if kind != "feed":
        raise SourceError(f"source {name!r}: kind {kind!r} cannot be fetched (expected feed or directory)")
    download = await _download(name, location, etag, last_modified, limits, client)
    if download.not_modified:
        return FetchResult([], download.etag, download.last_modified, True, [])
    articles, warnings = parse_feed(name, download.body, now=now, base_url=download.url)
    return FetchResult(articles, download.etag, download.last_modified, False, warnings)


async def _download(
    name: str,
    location: str,
    etag: str | None,
    last_modified: str | None,
    limits: FetchLimits,
    client: httpx.AsyncClient | None,
) -> _Download:
    scheme = urlsplit(location).scheme.lower() if "://" in location else ""
    if scheme in ("http", "https"):
        return await _http_get(name, location, etag, last_modified, limits, client)
    if scheme == "file":
        return await asyncio.to_thread(_read_file, name, Path(url2pathname(urlsplit(location).path)), limits)
    if scheme:
        raise SourceError(f"source {name!r}: cannot fetch {location!r}: only http, https and file URLs")
    return await asyncio.to_thread(_read_file, name, Path(location), limits)


def _read_file(name: str, path: Path, limits: FetchLimits) -> _Download:
    try:
        with path.open("rb") as handle:
            body = handle.read(limits.max_bytes + 1)
    except OSError as exc:
        raise SourceError(f"source {name!r}: cannot read {path}: {exc.strerror or exc}") from exc
    if len(body) > limits.max_bytes:
        raise SourceError(f"source {name!r}: {path} is larger than {limits.max_bytes} bytes")
    return _Download(body, None, None, None)


async def _http_get(
    name: str,
    url: str,
    etag: str | None,
    last_modified: str | None,
    limits: FetchLimits,
    client: httpx.AsyncClient | None,
) -> _Download:
    headers = {"User-Agent": USER_AGENT, "Accept": _ACCEPT}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    http = client or httpx.AsyncClient(timeout=limits.timeout, follow_redirects=False)
    try:
        # httpx times each read; the outer deadline also stops a server that trickles bytes.
        async with asyncio.timeout(limits.timeout):
            return await _follow_redirects(name, http, url, headers, etag, last_modified, limits)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise SourceError(f"source {name!r}: {url} did not answer within {limits.timeout:g}s") from exc
    except httpx.HTTPError as exc:
        raise SourceError(f"source {name!r}: cannot fetch {url}: {exc or type(exc).__name__}") from exc
    finally:
        if client is None:
            await http.aclose()


async def _follow_redirects(
    name: str,
    http: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    etag: str | None,
    last_modified: str | None,
    limits: FetchLimits,
) -> _Download:
    current, seen = url, {url}
    for _ in range(limits.max_redirects + 1):
        request = http.build_request("GET", current, headers=headers, timeout=limits.timeout)
        response = await http.send(request, stream=True, follow_redirects=False)
        try:
            if response.status_code in _REDIRECTS:
                target = urljoin(current, response.headers.get("location", ""))
                if urlsplit(target).scheme.lower() not in ("http", "https"):
                    raise SourceError(f"source {name!r}: {current} redirects to a non-http URL {target!r}")
                if target in seen:
                    raise SourceError(f"source {name!r}: redirect loop at {target}")
                seen.add(target)
                current = target
                continue
            new_etag = response.headers.get("etag") or etag
            new_modified = response.headers.get("last-modified") or last_modified
            if response.status_code == 304:
                return _Download(b"", current, new_etag, new_modified, not_modified=True)
            if not 200 <= response.status_code < 300:
                raise SourceError(f"source {name!r}: HTTP {response.status_code} from {current}")
            body = await _read_capped(name, response, current, limits.max_bytes)
            return _Download(body, current, new_etag, new_modified)
        finally:
            await response.aclose()
    raise SourceError(f"source {name!r}: more than {limits.max_redirects} redirects from {url}")


async def _read_capped(name: str, response: httpx.Response, url: str, max_bytes: int) -> bytes:
    too_big = SourceError(f"source {name!r}: {url} is larger than {max_bytes} bytes")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    body = bytearray()
    # Counted after decompression, so a small gzip bomb is stopped too.
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise too_big
    return bytes(body)


_XML_DECL = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']", re.IGNORECASE)
_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _to_utf8(data: bytes) -> tuple[bytes, bool]:
    """The document re-encoded as UTF-8 and whether bad bytes had to be replaced.

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
        if declared:
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
    name: str, data: bytes, *, now: datetime, base_url: str | None = None
) -> tuple[list[ParsedArticle], list[str]]:
    """Articles and warnings from RSS, Atom or JSON Feed bytes; SourceError when it is none of them."""
    warnings: list[str] = []
    data, repaired = _to_utf8(data)
    if repaired:
        warnings.append(f"{name}: feed has bytes that are not valid in its encoding; replaced them")
    if data.lstrip().startswith(b"{"):
        items = _json_feed_items(name, data, base_url)
    else:
        _refuse_entities(name, data)
        items = _feedparser_items(name, data, base_url, warnings)
    return _build_articles(name, items, now, warnings), warnings


def _feedparser_items(name: str, data: bytes, base_url: str | None, warnings: list[str]) -> list[_Item]:
    headers = {"content-location": base_url} if base_url else {}
    # nh3 sanitizes later; feedparser's own pass would unwrap <iframe> and keep its fallback text.
    parsed = feedparser.parse(data, response_headers=headers, sanitize_html=False)
    if not parsed.entries:
        head = data.lstrip()[:200].lower()
        if head.startswith((b"<!doctype html", b"<html")):
            raise SourceError(f"source {name!r}: got an HTML page, not a feed")
        if parsed.bozo:
            raise SourceError(f"source {name!r}: cannot parse feed: {parsed.get('bozo_exception')}")
        if not parsed.version:
            raise SourceError(f"source {name!r}: not an RSS, Atom or JSON feed")
    elif parsed.bozo:
        warnings.append(
            f"{name}: feed is not well-formed ({parsed.get('bozo_exception')}); read it leniently"
        )
    feed_link = parsed.feed.get("link") or base_url
    return [_feedparser_item(entry, feed_link, index) for index, entry in enumerate(parsed.entries)]


def _feedparser_item(entry: Any, feed_link: str | None, index: int) -> _Item:
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
    link = entry.get("link")
    return _Item(
        label=str(entry.get("id") or link or title or f"#{index + 1}"),
        guid=entry.get("id"),
        link=link,
        title=title,
        author=entry.get("author"),
        published=published,
        content_html=body,
        image=_feedparser_image(entry),
        date_text=entry.get("published") or entry.get("updated"),
        base=detail.get("base") or link or feed_link,
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


def _json_feed_items(name: str, data: bytes, base_url: str | None) -> list[_Item]:
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
    return [
        _json_feed_item(item, base, index)
        for index, item in enumerate(feed["items"])
        if isinstance(item, dict)
    ]


def _json_feed_item(item: dict[str, Any], base: str | None, index: int) -> _Item:
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
    return _Item(
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
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


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


def _build_articles(
    name: str, items: Iterable[_Item], now: datetime, warnings: list[str], *, warn_undated: bool = True
) -> list[ParsedArticle]:
    articles: list[ParsedArticle] = []
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
) -> ParsedArticle:
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
    return ParsedArticle(
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


def read_directory(
    name: str, directory: Path, now: datetime, limits: FetchLimits = FetchLimits()
) -> tuple[list[ParsedArticle], list[str]]:
    """Articles from the .txt, .md and .html files of one directory, in file-name order."""
    if not directory.is_dir():
        raise SourceError(f"source {name!r}: directory {directory} does not exist")
    warnings: list[str] = []
    items: list[_Item] = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        reader = _READERS.get(path.suffix.lower())
        if reader is None or path.name.startswith(".") or not path.is_file():
            continue
        relative = path.relative_to(directory).as_posix()
        try:
            if path.stat().st_size > limits.max_bytes:
                warnings.append(f"{name}: {relative}: larger than {limits.max_bytes} bytes; skipped")
                continue
            text = path.read_bytes().decode("utf-8-sig")
        except OSError as exc:
            warnings.append(f"{name}: {relative}: cannot read ({exc.strerror or exc}); skipped")
            continue
        except UnicodeDecodeError:
            warnings.append(f"{name}: {relative}: not UTF-8 text; skipped")
            continue
        item = reader(text, relative)
        if item is None:
            warnings.append(f"{name}: {relative}: empty; skipped")
            continue
        items.append(item)
    # Article files rarely carry dates, so a missing one is normal there, not worth a warning.
    return _build_articles(name, items, now, warnings, warn_undated=False), warnings


def _read_text(text: str, relative: str) -> _Item | None:
    headline, _, body = text.lstrip().partition("\n")
    if not headline.strip():
        return None
    return _Item(
        label=relative,
        guid=f"file:{relative}",
        link=None,
        title=headline,
        author=None,
        published=None,
        content_html=text_to_html(body),
    )


_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL)


def _front_matter(text: str) -> tuple[dict[str, str], str]:
    match = _FRONT_MATTER.match(text.lstrip("\ufeff"))
    if not match:
        return {}, text
    fields: dict[str, str] = {}
    for line in match.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not line[:1].isspace():
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            fields[key.strip().lower()] = value
    return fields, text[match.end() :]


def _read_markdown(text: str, relative: str) -> _Item | None:
    fields, body = _front_matter(text)
    if not body.strip() and not fields.get("title"):
        return None
    root = parse_fragment(MarkdownIt("commonmark").render(body))
    heading = _take_heading(root)
    title = fields.get("title") or heading or ""
    link = fields.get("url") or fields.get("link")
    return _Item(
        label=relative,
        guid=None if canonical_url(link or "") else f"file:{relative}",
        link=link,
        title=title,
        author=fields.get("author"),
        published=parse_date(fields.get("date")),
        content_html=_inner_html(root),
        image=fields.get("image"),
        base=link,
        summary=fields.get("summary"),
    )


def _read_html(text: str, relative: str) -> _Item | None:
    if not text.strip():
        return None
    document = lxml.html.document_fromstring(text)
    container = next(
        (found[0] for xpath in ("//article", "//main", "//body") if (found := document.xpath(xpath))),
        document,
    )

    def meta(*names: str) -> str | None:
        for meta_name in names:
            for el in document.xpath("//meta[@property=$n or @name=$n]", n=meta_name):
                if el.get("content", "").strip():
                    return str(el.get("content")).strip()
        return None

    canonical = document.xpath("//link[@rel='canonical']/@href")
    link = (str(canonical[0]) if canonical else None) or meta("og:url")
    title = _take_heading(container) or " ".join(document.xpath("//title//text()")) or meta("og:title") or ""
    return _Item(
        label=relative,
        guid=None if canonical_url(link or "") else f"file:{relative}",
        link=link,
        title=title,
        author=meta("author", "article:author"),
        published=parse_date(meta("article:published_time", "date")),
        content_html=_inner_html(container),
        image=meta("og:image"),
        base=link,
    )


def _take_heading(root: Any) -> str | None:
    """The first <h1>'s text, removed from the content because it is the title (or repeats it)."""
    for heading in root.iter("h1"):
        text = " ".join(heading.text_content().split())
        heading.drop_tree()
        return text or None
    return None


def _inner_html(root: Any) -> str:
    children = "".join(lxml.html.tostring(child, encoding="unicode") for child in root)
    return html_lib.escape(str(root.text or ""), quote=False) + children


_READERS: dict[str, Callable[[str, str], _Item | None]] = {
    ".txt": _read_text,
    ".md": _read_markdown,
    ".markdown": _read_markdown,
    ".html": _read_html,
    ".htm": _read_html,
}
