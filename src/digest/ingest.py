"""Fetching sources: the I/O edge that turns feeds and article directories into NewArticles.

Feeds come over HTTP (with a timeout, a size cap, a redirect cap and conditional GET), from
file:// URLs or plain paths, and are parsed by feeds.py; directories hold .txt, .md and .html
articles, parsed by article_files.py. Every article leaves here through source_items.py, with
its boilerplate trimmed and its HTML sanitized.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import httpx

from digest.article_files import PARSERS
from digest.errors import SourceError
from digest.feeds import parse_feed
from digest.models import NewArticle
from digest.source_items import Parsed, SourceItem, build_articles

USER_AGENT = "digest/0.1 (+self-hosted newsletter digest)"
_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/json;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.1"
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class FetchLimits:
    timeout: float = 20.0
    max_bytes: int = 5_000_000
    max_redirects: int = 5


@dataclass(frozen=True)
class FetchResult:
    articles: list[NewArticle]
    etag: str | None
    last_modified: str | None
    not_modified: bool
    warnings: list[str]
    refused: list[str] = field(default_factory=list)  # one line per item not taken, saying why
    title: str | None = None  # the feed's title: what readers are shown instead of the source's name


@dataclass(frozen=True)
class _Download:
    body: bytes
    url: str | None
    etag: str | None
    last_modified: str | None
    not_modified: bool = False
    content_type: str | None = None


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
        parsed = await asyncio.to_thread(read_directory, name, Path(location), now, limits)
        return FetchResult(parsed.articles, None, None, False, parsed.warnings, parsed.refused)
    if kind != "feed":
        raise SourceError(f"source {name!r}: kind {kind!r} cannot be fetched (expected feed or directory)")
    download = await _download(name, location, etag, last_modified, limits, client)
    if download.not_modified:
        return FetchResult([], download.etag, download.last_modified, True, [])
    parsed = await asyncio.to_thread(
        parse_feed, name, download.body, now=now, base_url=download.url, content_type=download.content_type
    )
    return FetchResult(
        parsed.articles,
        download.etag,
        download.last_modified,
        False,
        parsed.warnings,
        parsed.refused,
        title=parsed.title,
    )


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
            location = urljoin(current, response.headers.get("content-location", "")) or current
            return _Download(
                body, location, new_etag, new_modified, content_type=response.headers.get("content-type")
            )
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


def read_directory(name: str, directory: Path, now: datetime, limits: FetchLimits = FetchLimits()) -> Parsed:
    """Articles from the .txt, .md and .html files of one directory, in file-name order."""
    if not directory.is_dir():
        raise SourceError(f"source {name!r}: directory {directory} does not exist")
    warnings: list[str] = []
    items: list[SourceItem] = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        parse = PARSERS.get(path.suffix.lower())
        if parse is None or path.name.startswith(".") or not path.is_file():
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
        item = parse(text, relative)
        if item is None:
            warnings.append(f"{name}: {relative}: empty; skipped")
            continue
        items.append(item)
    # Article files rarely carry dates, so a missing one is normal there, not worth a warning.
    articles, refused = build_articles(name, items, now, warnings, warn_undated=False)
    return Parsed(articles, refused, warnings)
