"""Ingest keeps every story of real feeds nobody here wrote (tests/fixtures/feeds/real-world/).

Each test stores feeds through the whole path (fetch, parse, store) in a real database and counts
what was stored: an item is the same story as another only by identity (its guid, else its link
with the fragment, else its content with media and date), never by resemblance.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import func, insert, select

from conftest import write_config
from digest import bootstrap, feeds, sources, store
from digest.config import load_config
from digest.models import Article, ArticleSource, Source
from digest.store import compose as compose_store
from digest.store import migrate
from digest.store import sources as sources_store

REAL_WORLD = Path(__file__).resolve().parent / "fixtures" / "feeds" / "real-world"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

# Items in each file, each one a distinct story (tests/fixtures/feeds/real-world/MANIFEST.csv).
# Before identities (revision 0003), title+text fingerprints merged 9 of tumblr's 20 posts into
# others ("Photo" with an image only), 2 of the status feed's 10 events ("Support System - Up"
# three times) and one of the two comments that differ only by #fragment.
STORIES = {
    "atoma-jsonfeed-org.json": 1,
    "node-feedparser-ongoing.atom": 20,
    "rss-parser-qq-gb2312.xml": 20,
    "rss-parser-uolnoticias.rss": 15,
    "rss2email-allthingsrss.atom": 3,
    "rss2email-bbc-chinese.atom": 2,
    "rss2email-disqus.rss": 2,
    "rss2email-fastmailstatus.rss": 10,
    "rss2email-gmane.rss": 5,
    "rss2email-nodejs-feed1.xml": 1,
    "rss2email-tumblr.rss": 20,
}


async def project(
    directory: Path, url: str, feeds: dict[str, str], settings: dict[str, str] | None = None
) -> bootstrap.App:
    """A project whose sources are the given feeds (name → path or URL), one list per source;
    `settings` adds TOML lines to a source's table."""
    extra = "".join(
        f'\n[[sources]]\nname = "{name}"\nkind = "feed"\n'
        + (f'url = "{where}"\n' if where.startswith("http") else f'path = "{where}"\n')
        + (settings or {}).get(name, "")
        for name, where in feeds.items()
    )
    lists = "".join(
        f'[[lists]]\nslug = "{name}"\nname = "{name}"\nsources = ["{name}"]\nmax_age = "3650d"\n'
        for name in feeds
    )
    cfg = load_config(
        write_config(directory, database_url=url, smtp_port=2525, extra=extra, lists=lists), environ={}
    )
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    return await bootstrap.open_app(cfg)


async def count(app: bootstrap.App, table: type[Article] | type[ArticleSource]) -> int:
    async with app.db.read() as s:
        return int((await s.execute(select(func.count()).select_from(table))).scalar_one())


@pytest.mark.parametrize("name", sorted(STORIES))
async def test_every_story_of_a_real_world_feed_is_stored_and_known_on_the_next_fetch(
    tmp_path: Path, name: str
) -> None:
    app = await project(tmp_path, f"sqlite:///{tmp_path}/digest.db", {"feed": str(REAL_WORLD / name)})
    try:
        first = await sources.ingest_sources(app, NOW, "feed")
        again = await sources.ingest_sources(app, NOW, "feed")
        assert await count(app, Article) == STORIES[name]
    finally:
        await app.db.close()
    assert (first[0].new, first[0].linked, first[0].refused, first[0].error) == (STORIES[name], 0, (), None)
    assert (again[0].new, again[0].known, again[0].updated) == (0, STORIES[name], 0)


async def test_the_whole_corpus_in_one_database_keeps_every_story(tmp_path: Path, database_url: str) -> None:
    feeds = {Path(name).stem: str(REAL_WORLD / name) for name in STORIES}
    app = await project(tmp_path, database_url, feeds)
    try:
        reports = [r for name in feeds for r in await sources.ingest_sources(app, NOW, name)]
        assert all(r.error is None for r in reports), [r.error for r in reports]
        assert await count(app, Article) == sum(STORIES.values())
        assert sum(r.new for r in reports) == sum(STORIES.values())
    finally:
        await app.db.close()


async def test_an_exact_copy_in_another_source_is_linked_to_the_stored_story(
    tmp_path: Path, database_url: str
) -> None:
    """The Node.js advisory feed, before and after its item was updated, as two sources: the
    same guid-URL is one story, reached from both sources' lists."""
    feeds = {
        "alpha": str(REAL_WORLD / "rss2email-nodejs-feed1.xml"),
        "beta": str(REAL_WORLD / "rss2email-nodejs-feed2.xml"),
    }
    app = await project(tmp_path, database_url, feeds)
    try:
        reports = {r.source: r for name in feeds for r in await sources.ingest_sources(app, NOW, name)}
        assert (reports["alpha"].new, reports["beta"].new, reports["beta"].linked) == (1, 0, 1)
        assert await count(app, Article) == 1 and await count(app, ArticleSource) == 2
        async with app.db.read() as s:
            beta = await sources_store.list_by_slug(s, "beta")
            assert beta is not None
            upto = await compose_store.list_max_seq(s, beta.id)
            seen = await compose_store.new_articles_for_list(
                s, beta.id, 0, upto, datetime(2000, 1, 1, tzinfo=UTC)
            )
        assert len(seen) == 1 and seen[0].source_name == "beta"
    finally:
        await app.db.close()


async def test_an_item_changed_in_place_is_updated_not_stored_again(tmp_path: Path) -> None:
    feed = tmp_path / "advisories.xml"
    feed.write_bytes((REAL_WORLD / "rss2email-nodejs-feed1.xml").read_bytes())
    app = await project(tmp_path, f"sqlite:///{tmp_path}/digest.db", {"nodejs": str(feed)})
    try:
        await sources.ingest_sources(app, NOW, "nodejs")
        async with app.db.read() as s:
            before = (await s.execute(select(Article.summary))).scalar_one()
        feed.write_bytes((REAL_WORLD / "rss2email-nodejs-feed2.xml").read_bytes())
        report = (await sources.ingest_sources(app, NOW, "nodejs"))[0]
        async with app.db.read() as s:
            after = (await s.execute(select(Article.summary))).scalar_one()
        assert (report.new, report.updated, report.known) == (0, 1, 0)
        assert before != after and await count(app, Article) == 1
    finally:
        await app.db.close()


IMAGE_ONLY = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>{who}</title><link>https://{who}.example/</link>
<item><description>&lt;img src="https://{who}.example/pics/1.jpg"&gt;</description>
<pubDate>Mon, 30 Nov 2026 09:00:00 GMT</pubDate></item>
<item><description>&lt;img src="https://{who}.example/pics/2.jpg"&gt;</description>
<pubDate>Mon, 30 Nov 2026 09:00:00 GMT</pubDate></item>
</channel></rss>"""


async def test_untitled_image_posts_without_guid_or_link_are_kept_apart_in_and_across_sources(
    tmp_path: Path,
) -> None:
    for who in ("alice", "bob"):
        (tmp_path / f"{who}.xml").write_text(IMAGE_ONLY.format(who=who))
    feeds = {who: str(tmp_path / f"{who}.xml") for who in ("alice", "bob")}
    app = await project(tmp_path, f"sqlite:///{tmp_path}/digest.db", feeds)
    try:
        reports = [r for who in feeds for r in await sources.ingest_sources(app, NOW, who)]
        again = [r for who in feeds for r in await sources.ingest_sources(app, NOW, who)]
        assert [r.new for r in reports] == [2, 2] and [r.known for r in again] == [2, 2]
        async with app.db.read() as s:
            rows = (
                await s.execute(
                    select(Source.name, Article.image_url)
                    .join(ArticleSource, ArticleSource.source_id == Source.id)
                    .join(Article, Article.id == ArticleSource.article_id)
                )
            ).all()
        assert sorted(rows) == [
            ("alice", "https://alice.example/pics/1.jpg"),
            ("alice", "https://alice.example/pics/2.jpg"),
            ("bob", "https://bob.example/pics/1.jpg"),
            ("bob", "https://bob.example/pics/2.jpg"),
        ]
    finally:
        await app.db.close()


class _Served(BaseHTTPRequestHandler):
    """Serves the real-world feeds with the Content-Type a server would send."""

    routes: ClassVar[dict[str, tuple[bytes, str]]] = {
        "/uol-latin1": (
            (REAL_WORLD / "rss-parser-uolnoticias.rss").read_bytes(),
            "text/xml; charset=ISO-8859-1",
        ),
        "/uol-no-charset": ((REAL_WORLD / "rss-parser-uolnoticias.rss").read_bytes(), "text/xml"),
        "/tumblr": ((REAL_WORLD / "rss2email-tumblr.rss").read_bytes(), "application/rss+xml; charset=UTF-8"),
        "/empty": (
            b'<?xml version="1.0"?><rss version="2.0"><channel><title>Quiet</title>'
            b"<link>https://quiet.example/</link><description>Nothing yet</description></channel></rss>",
            "application/rss+xml",
        ),
    }

    def do_GET(self) -> None:
        body, content_type = self.routes.get(self.path, (b"", "text/plain"))
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web_feeds() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Served)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


async def test_over_http_the_charset_and_the_feed_type_reach_the_parser(
    tmp_path: Path, web_feeds: str
) -> None:
    feeds = {
        "latin1": f"{web_feeds}/uol-latin1",
        "nocharset": f"{web_feeds}/uol-no-charset",
        "tumblr": f"{web_feeds}/tumblr",
        "quiet": f"{web_feeds}/empty",
    }
    app = await project(tmp_path, f"sqlite:///{tmp_path}/digest.db", feeds)
    try:
        reports = {r.source: r for name in feeds for r in await sources.ingest_sources(app, NOW, name)}
        async with app.db.read() as s:
            titles = (await s.execute(select(Article.title))).scalars().all()
    finally:
        await app.db.close()
    # The server's charset decodes the Latin-1 bytes; without it the bad bytes are replaced, said once.
    assert reports["latin1"].new == 15 and reports["latin1"].warnings == ()
    assert any("simulações de 2º turno" in t for t in titles)
    assert reports["nocharset"].linked == 15  # the same links as the other source: the same stories
    assert any("not valid in its encoding" in w for w in reports["nocharset"].warnings)
    # A clean feed over HTTP draws no "not well-formed" warning; an empty one is 0 new, no error.
    assert reports["tumblr"].new == 20 and reports["tumblr"].warnings == ()
    assert (reports["quiet"].error, reports["quiet"].new, reports["quiet"].warnings) == (None, 0, ())


async def test_a_feed_over_the_configured_size_is_refused_for_that_source_only(tmp_path: Path) -> None:
    feeds = {
        "big": str(REAL_WORLD / "node-feedparser-ongoing.atom"),
        "small": str(REAL_WORLD / "rss2email-gmane.rss"),
    }
    app = await project(tmp_path, f"sqlite:///{tmp_path}/digest.db", feeds, {"big": "max_bytes = 10000\n"})
    try:
        reports = {r.source: r for name in feeds for r in await sources.ingest_sources(app, NOW, name)}
    finally:
        await app.db.close()
    assert reports["big"].error is not None and "larger than 10000 bytes" in reports["big"].error
    assert reports["small"].new == 5


async def test_a_database_from_the_previous_version_is_rekeyed_without_losing_or_repeating_a_story(
    tmp_path: Path, database_url: str
) -> None:
    """Revision 0002 stored the two Disqus comments as one, under their canonical URL (the second
    was lost). After 0003 the stored comment is known again under its new key, the lost one
    arrives as new, and nothing is stored twice."""
    disqus = REAL_WORLD / "rss2email-disqus.rss"
    cfg = load_config(
        write_config(
            tmp_path,
            database_url=database_url,
            smtp_port=2525,
            extra=f'\n[[sources]]\nname = "comments"\nkind = "feed"\npath = "{disqus}"\n',
            lists='[[lists]]\nslug = "comments"\nname = "Comments"\nsources = ["comments"]\nmax_age = "3650d"\n',
        ),
        environ={},
    )
    url = store.resolve_url(cfg.database.url, cfg.base_dir)
    migrate.migrate(url, "0002")
    kept = next(
        a
        for a in feeds.parse_feed("comments", disqus.read_bytes(), now=NOW).articles
        if a.guid.endswith("40")
    )
    database = bootstrap.open_database(cfg)  # the source and list rows, as 0002 had them
    try:
        async with database.write() as s:
            source = await sources_store.upsert_source(
                s, "comments", "feed", str(disqus), timedelta(minutes=30)
            )
            await sources_store.upsert_list(s, "comments", {"name": "Comments", "schedule": "0 7 * * *",
                "timezone": "UTC", "min_articles": 1, "max_articles": 10, "max_age_seconds": 3650 * 86400,
                "template": "digest"}, [source.id])  # fmt: skip
            source_id = source.id
            article_id = (
                await s.execute(
                    insert(Article)
                    .values(
                        guid=kept.url,
                        url=kept.url,
                        title=kept.title,
                        author=kept.author,
                        published_at=kept.published_at,
                        summary=kept.summary,
                        content=kept.content_html,
                        image_url=kept.image_url,
                        fingerprint=kept.fingerprint,
                        created_at=NOW,
                    )
                    .returning(Article.id)
                )
            ).scalar_one()
            await s.execute(
                insert(ArticleSource).values(
                    article_id=article_id, source_id=source_id, guid=kept.url, seq=1, ingested_at=NOW
                )
            )
    finally:
        await database.close()
    migrate.migrate(url)
    app = await bootstrap.open_app(cfg)
    try:
        report = (await sources.ingest_sources(app, NOW, "comments"))[0]
        assert (report.known, report.new) == (1, 1)
        assert await count(app, Article) == 2 and await count(app, ArticleSource) == 2
        async with app.db.read() as s:
            rekeyed = (
                await s.execute(select(ArticleSource.guid).where(ArticleSource.article_id == article_id))
            ).scalar_one()
        assert rekeyed == kept.guid and rekeyed.endswith("#comment-713578640")
        again = (await sources.ingest_sources(app, NOW, "comments"))[0]
        assert (again.known, again.new) == (2, 0)
    finally:
        await app.db.close()


def test_digest_ingest_accounts_for_every_item_and_names_a_broken_source_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    fixtures = REAL_WORLD.parent
    config = write_config(
        tmp_path,
        database_url=f"sqlite:///{tmp_path}/digest.db",
        smtp_port=2525,
        extra=(
            f'\n[[sources]]\nname = "doubles"\nkind = "feed"\npath = "{fixtures / "duplicate_guids.xml"}"\n'
            f'\n[[sources]]\nname = "gone"\nkind = "feed"\npath = "{tmp_path / "missing.xml"}"\n'
        ),
        lists='[[lists]]\nslug = "demo"\nname = "Demo"\nsources = ["seeds", "doubles", "gone"]\n',
    )
    digest = Path(sys.executable).parent / "digest"
    subprocess.run([str(digest), "--config", str(config), "migrate"], check=True, capture_output=True)
    done = subprocess.run(
        [str(digest), "--config", str(config), "ingest"], capture_output=True, text=True, timeout=120
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert (
        "source doubles: 2 new, 0 updated, 0 already known, 0 linked from another source, 1 refused" in said
    )
    assert "refused: doubles: item story-77: the same id as an earlier item" in said
    assert said.count("missing.xml") == 1, said  # the broken source, said once


async def test_front_matter_dates_are_honoured_under_either_name(tmp_path: Path) -> None:
    from digest import ingest

    (tmp_path / "notes.md").write_text(
        "---\ntitle: Harbour notes\npublished: 2026-11-20T08:00:00Z\n---\nTides.\n"
    )
    (tmp_path / "older.md").write_text("---\ntitle: Older notes\ndate: 2026-11-19\n---\nWinds.\n")
    (tmp_path / "plain.txt").write_text(
        "---\ntitle: Ferry notice\npublished: 2026-11-18 07:30\n---\nLate boat.\n"
    )
    parsed = ingest.read_directory("notes", tmp_path, NOW)
    dates = {a.title: a.published_at for a in parsed.articles}
    assert dates == {
        "Harbour notes": datetime(2026, 11, 20, 8, 0, tzinfo=UTC),
        "Older notes": datetime(2026, 11, 19, tzinfo=UTC),
        "Ferry notice": datetime(2026, 11, 18, 7, 30, tzinfo=UTC),
    }


def test_an_item_with_nothing_to_show_is_refused_not_stored_as_untitled() -> None:
    data = (
        b'{"version": "https://jsonfeed.org/version/1.1", "title": "Empty items", "items": ['
        b'{"id": "blank-1"}, {"id": "blank-2", "content_html": "<p> </p>"},'
        b'{"id": "real", "title": "Harbour reopens", "content_text": "Boats are back."}]}'
    )
    parsed = feeds.parse_feed("json", data, now=NOW)
    assert [a.title for a in parsed.articles] == ["Harbour reopens"]
    assert len(parsed.refused) == 2 and all("nothing to show" in line for line in parsed.refused)
