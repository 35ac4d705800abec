"""Feeds and article directories parsed into NewArticles; HTTP limits against a real local server."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from digest import ingest
from digest.errors import SourceError
from digest.ingest import FetchLimits, FetchResult, fetch_source

ROOT = Path(__file__).parent
FEEDS = ROOT / "fixtures" / "feeds"
GOLDEN = ROOT / "golden" / "feeds"
SEEDS = ROOT.parent / "src" / "digest" / "defaults" / "seeds"
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
RSS = (FEEDS / "rss2_cdata.xml").read_bytes()


def render(result: FetchResult) -> dict[str, object]:
    articles = []
    for article in result.articles:
        fields = dataclasses.asdict(article)
        fields["published_at"] = article.published_at.isoformat()
        articles.append(fields)
    return {"articles": articles, "warnings": result.warnings, "refused": result.refused}


def check_golden(path: Path, rendered: object) -> None:
    text = json.dumps(rendered, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    if os.environ.get("DIGEST_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; run with DIGEST_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")


async def fetch_feed(path: Path) -> FetchResult:
    return await fetch_source(path.name, "feed", str(path), now=NOW)


REAL_WORLD = FEEDS / "real-world"
FEED_SUFFIXES = {".xml", ".rss", ".atom", ".rdf", ".json", ".txt", ".html"}


def feed_files() -> list[Path]:
    """Our own fixtures, and the third-party feeds of real-world/ (its README and manifest aside)."""
    mine = [p for p in FEEDS.iterdir() if p.is_file()]
    theirs = [p for p in REAL_WORLD.iterdir() if p.suffix in FEED_SUFFIXES]
    return sorted(mine) + sorted(theirs)


@pytest.mark.parametrize("path", feed_files(), ids=lambda p: p.relative_to(FEEDS).as_posix())
async def test_feed_parses_to_golden_articles_or_error(path: Path) -> None:
    try:
        rendered: object = render(await fetch_feed(path))
    except SourceError as exc:
        rendered = {"error": str(exc)}
    check_golden(GOLDEN / path.relative_to(FEEDS).with_suffix(".json"), rendered)


async def test_seed_directory_parses_to_golden_articles() -> None:
    check_golden(
        GOLDEN / "seeds_directory.json", render(await fetch_source("seeds", "directory", str(SEEDS), now=NOW))
    )


async def test_one_story_in_two_feeds_has_one_canonical_url_and_fingerprint() -> None:
    (a,) = (await fetch_feed(FEEDS / "same_story_a.xml")).articles
    (b,) = (await fetch_feed(FEEDS / "same_story_b.xml")).articles
    assert a.url == b.url == "https://coastal-news.example/stories/lifeboat-rescue?id=991"
    assert a.fingerprint == b.fingerprint
    assert a.guid != b.guid


async def test_hostile_item_reaches_the_digest_harmless() -> None:
    (article,) = (await fetch_feed(FEEDS / "hostile.xml")).articles
    html = article.content_html.lower()
    for forbidden in (
        "<script",
        "onerror",
        "onclick",
        "onmouseover",
        "javascript:",
        "data:",
        "<iframe",
        "<style",
        "style=",
        "<form",
        "<input",
        "<svg",
        "frames",
    ):
        assert forbidden not in html
    assert "rain is expected on sunday." in html
    assert article.title == "Totally normal article"


async def test_title_with_line_breaks_becomes_one_line() -> None:
    (article,) = (await fetch_feed(FEEDS / "title_crlf.xml")).articles
    assert "\r" not in article.title
    assert "\n" not in article.title
    assert article.title == "Bridge closed for repairs Bcc: victim@example.com until Monday"


async def test_atom_xhtml_relative_links_resolve_against_xml_base() -> None:
    first, _ = (await fetch_feed(FEEDS / "atom_xhtml_base.xml")).articles
    assert first.url == "https://blog.harbourlabs.example/posts/2024/queue-on-postgres"
    assert 'href="https://blog.harbourlabs.example/posts/2024/queue-benchmarks.html"' in first.content_html
    assert 'href="https://blog.harbourlabs.example/posts/2023/redis-outage.html"' in first.content_html
    assert first.image_url == "https://blog.harbourlabs.example/posts/2024/images/queue-latency.png"
    assert "About the author" not in first.content_html


async def test_a_second_item_with_the_same_guid_is_refused_with_the_reason() -> None:
    result = await fetch_feed(FEEDS / "duplicate_guids.xml")
    assert [a.guid for a in result.articles] == ["story-77", "story-78"]
    assert result.articles[0].title == "Market reopens after flood clean-up"
    assert len(result.refused) == 1 and "story-77" in result.refused[0] and "same id" in result.refused[0]


async def test_missing_or_unreadable_dates_become_the_ingest_time() -> None:
    result = await fetch_feed(FEEDS / "missing_dates.xml")
    assert [a.published_at for a in result.articles] == [NOW, NOW]
    assert len(result.warnings) == 2


@pytest.mark.parametrize("name", ["entity_bomb.xml", "external_entity.xml"])
async def test_xml_declaring_entities_is_refused(name: str) -> None:
    with pytest.raises(SourceError, match=rf"{name}.*declares entities"):
        await fetch_feed(FEEDS / name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("html_page.html", "HTML page"),
        ("garbage.txt", "cannot parse"),
        ("json_not_feed.json", "not a JSON Feed"),
    ],
)
async def test_unparseable_feed_names_the_source_and_the_problem(name: str, reason: str) -> None:
    with pytest.raises(SourceError, match=rf"source '{name}'.*{reason}"):
        await fetch_feed(FEEDS / name)


async def test_feed_from_file_url_and_missing_file() -> None:
    result = await fetch_source("gazette", "feed", (FEEDS / "rss2_cdata.xml").as_uri(), now=NOW)
    assert len(result.articles) == 2
    with pytest.raises(SourceError, match="source 'gone': cannot read"):
        await fetch_source("gone", "feed", str(FEEDS / "nope.xml"), now=NOW)


async def test_feeds_and_folders_are_parsed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []

    def on_thread(real: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            threads.append(threading.current_thread().name)
            return real(*args, **kwargs)

        return run

    monkeypatch.setattr(ingest, "parse_feed", on_thread(ingest.parse_feed))
    monkeypatch.setattr(ingest, "read_directory", on_thread(ingest.read_directory))
    await fetch_source("gazette", "feed", (FEEDS / "rss2_cdata.xml").as_uri(), now=NOW)
    await fetch_source("seeds", "directory", str(SEEDS), now=NOW)
    assert len(threads) == 2 and threading.main_thread().name not in threads


async def test_unknown_kind_and_scheme_are_refused() -> None:
    with pytest.raises(SourceError, match="kind 'carrier-pigeon'"):
        await fetch_source("odd", "carrier-pigeon", "x", now=NOW)
    with pytest.raises(SourceError, match="only http, https and file"):
        await fetch_source("odd", "feed", "ftp://files.example/feed.xml", now=NOW)


async def test_seed_headline_is_the_title_and_its_boilerplate_is_gone() -> None:
    result = await fetch_source("seeds", "directory", str(SEEDS), now=NOW)
    seed = next(a for a in result.articles if a.guid == "file:000_ef3eb6749892e7fe.txt")
    assert seed.title == "S.Korea, US, Japan urge repatriation of N.Korean workers"
    assert seed.url is None
    assert seed.published_at == NOW
    everything = (seed.summary + seed.content_html).lower()
    for leftover in ("spam", "your email", "about author", "you may also like", "instagram", "icu"):
        assert leftover not in everything
    assert seed.content_html.rstrip().endswith("Security Council resolutions.”</p>")


async def test_markdown_and_html_seeds_use_front_matter_and_page_metadata() -> None:
    result = await fetch_source("seeds", "directory", str(SEEDS), now=NOW)
    by_title = {a.title: a for a in result.articles}
    ferry = by_title["Harbour ferry switches to battery power"]
    assert ferry.url == "https://www.coastline-post.example/news/harbour-ferry-battery"
    assert ferry.author == "Eilidh Mackay"
    assert ferry.published_at == datetime(2024, 5, 30, 6, 45, tzinfo=UTC)
    assert "newsletter" not in ferry.content_html.lower()
    assert "Tags" not in ferry.content_html
    market = by_title["Victorian market hall reopens after restoration"]
    assert market.image_url == "https://northgate-chronicle.example/media/market-hall.jpg"
    for furniture in (
        "Related articles",
        "Share on",
        "Most read",
        "All rights reserved",
        "By Aisha Khan",
        "Sport",
    ):
        assert furniture not in market.content_html
    verges = by_title["Council lets roadside verges grow wild to help pollinators"]
    assert "Share this story" not in verges.content_html
    assert "Copyright" not in verges.content_html
    assert result.warnings == []


async def test_directory_skips_undecodable_files_with_a_warning_and_ignores_others(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Good headline\n\nA fine body paragraph.", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"Bad headline\n\n\xff\xfe not utf-8 \x80")
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "d.md").write_text("# Heading only from Markdown\n\nBody *text*.", encoding="utf-8")
    result = await fetch_source("drop", "directory", str(tmp_path), now=NOW)
    assert [a.title for a in result.articles] == ["Good headline", "Heading only from Markdown"]
    assert [a.guid for a in result.articles] == ["file:a.txt", "file:d.md"]
    assert result.warnings == ["drop: b.txt: not UTF-8 text; skipped"]


async def test_missing_directory_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"source 'notes': directory .* does not exist"):
        await fetch_source("notes", "directory", str(tmp_path / "missing"), now=NOW)


class FeedServer(BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self) -> None:
        path = self.path
        if path == "/feed.xml":
            if self.headers.get("If-None-Match") == '"v1"' or self.headers.get("If-Modified-Since"):
                self.send_response(304)
                self.end_headers()
                return
            self.answer(200, RSS, [("ETag", '"v1"'), ("Last-Modified", "Fri, 31 May 2024 10:00:00 GMT")])
        elif path == "/moved":
            self.answer(302, b"", [("Location", "/feed.xml")])
        elif path.startswith("/hop/"):
            self.answer(302, b"", [("Location", f"/hop/{int(path.rsplit('/', 1)[1]) + 1}")])
        elif path in ("/loop-a", "/loop-b"):
            self.answer(301, b"", [("Location", "/loop-b" if path == "/loop-a" else "/loop-a")])
        elif path == "/to-ftp":
            self.answer(302, b"", [("Location", "ftp://files.example/feed.xml")])
        elif path == "/huge-declared":
            self.answer(200, b"x" * 5000, [])
        elif path == "/huge-chunked":
            self.send_response(200)
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"<rss>" + b" " * 995)
        elif path == "/stall":
            self.release.wait(5)
        elif path == "/broken":
            self.answer(500, b"Internal Server Error", [])
        else:
            self.answer(404, b"", [])

    def answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up on purpose (size cap, timeout) is not an error here."""


@pytest.fixture
def server() -> Iterator[str]:
    FeedServer.release.clear()
    httpd = QuietServer(("127.0.0.1", 0), FeedServer)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    FeedServer.release.set()
    httpd.shutdown()
    httpd.server_close()


async def test_http_feed_returns_validators_then_not_modified(server: str) -> None:
    first = await fetch_source("gazette", "feed", f"{server}/feed.xml", now=NOW)
    assert len(first.articles) == 2
    assert not first.not_modified
    assert (first.etag, first.last_modified) == ('"v1"', "Fri, 31 May 2024 10:00:00 GMT")
    second = await fetch_source(
        "gazette", "feed", f"{server}/feed.xml", now=NOW, etag=first.etag, last_modified=first.last_modified
    )
    assert second.not_modified
    assert second.articles == []
    assert (second.etag, second.last_modified) == (first.etag, first.last_modified)


async def test_http_redirect_is_followed(server: str) -> None:
    result = await fetch_source("gazette", "feed", f"{server}/moved", now=NOW)
    assert len(result.articles) == 2


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/hop/0", "more than 3 redirects"),
        ("/loop-a", "redirect loop"),
        ("/to-ftp", "non-http URL"),
        ("/huge-declared", "larger than 1000 bytes"),
        ("/huge-chunked", "larger than 1000 bytes"),
        ("/broken", "HTTP 500 from"),
    ],
)
async def test_http_limits_raise_source_error_naming_the_source(server: str, path: str, message: str) -> None:
    limits = FetchLimits(timeout=5, max_bytes=1000, max_redirects=3)
    with pytest.raises(SourceError, match=rf"source 'wire': .*{message}"):
        await fetch_source("wire", "feed", f"{server}{path}", now=NOW, limits=limits)


async def test_stalled_server_times_out(server: str) -> None:
    with pytest.raises(SourceError, match=r"source 'slow': .* did not answer within 0.3s"):
        await fetch_source("slow", "feed", f"{server}/stall", now=NOW, limits=FetchLimits(timeout=0.3))
