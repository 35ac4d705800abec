"""A digest reads like a real publication: greeted by name, dated in the reader's zone, sources by
their titles and authors by name, every story behind "and N more", long words, URLs and right-to-left
stories intact. Real flows: ingest, compose and deliver to a real SMTP server, pages over HTTP."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path

import lxml.html
import pytest
from typer.testing import CliRunner

from conftest import ROOT, SmtpSink
from digest import bootstrap, compose, personal, readers, sources
from digest.cli import app
from digest.feeds import parse_feed
from digest.rendering import Templates, default_templates_dir, render_edition
from digest.stories import source_label
from digest.views import ArticleView, Branding, EditionView
from test_web import BASE, EXTRA, Site, open_site

LONG_WORD = "Straßenreinigungsgebühren"
LONG_URL = (
    "https://harbourtown.example.org/documents/2026/council/minutes/"
    "extraordinary-meeting-regarding-the-harbour-redevelopment-plan-final-version.pdf"
)
NOTES = 14


def story(folder: Path, n: int, published: str, *, summary: str = "", author: str = "") -> None:
    (folder / "seeds" / f"note-{n:02d}.md").write_text(
        f"---\ntitle: Harbour note number {n} of the week\ndate: {published}\n"
        f"url: https://harbourtown.example.org/n/{n}\n" + (f"author: {author}\n" if author else "") + "---\n"
        + (summary or f"Short harbour note {n}.") + "\n",
        encoding="utf-8",
    )  # fmt: skip


@pytest.fixture
async def paper(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[Site]:
    """A site whose seeds hold the samples and 14 notes, one of them with a long word and a URL."""
    extra = EXTRA.replace('name = "pushed"', 'name = "pushed"\ntitle = "Harbour Town Wire"')
    async with open_site(tmp_path, f"sqlite:///{tmp_path}/digest.db", smtp_sink, extra=extra) as site:
        for n in range(NOTES):
            summary = f"The {LONG_WORD} were discussed again; the minutes are at {LONG_URL} for anyone."
            story(tmp_path, n, f"2026-03-01T23:{59 - n:02d}:00Z", summary=summary if n == 0 else "",
                  author="Aroha Ngata" if n == 1 else "")  # fmt: skip
        yield site


async def digest_for(site: Site, *readers_: tuple[str, str, str | None]) -> dict[str, EmailMessage]:
    """Add (address, name, time zone) readers, ingest, send one digest; each reader's mail."""
    lst = await bootstrap.get_list(site.app, "demo")
    for address, name, zone in readers_:
        prefs = readers.ReaderPrefs(name=name, timezone=zone)
        async with site.app.db.write() as s:
            await readers.add_subscription(s, lst, address, prefs, confirmed=True, now=site.clock())
    await sources.ingest_sources(site.app, site.clock())
    await compose.compose(site.app, lst, site.clock(), manual=True)
    await site.deliver()
    return {address: site.mail_to(address)[-1] for address, _, _ in readers_}


def parts(msg: EmailMessage) -> tuple[str, str]:
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()).replace("\r\n", "\n"), str(html.get_content())


async def test_a_digest_greets_a_reader_by_the_name_they_gave_and_no_one_else(paper: Site) -> None:
    got = await digest_for(paper, ("zoe@example.com", "Zoë O'Brien", None), ("ann@example.com", "", None))
    text, html = parts(got["zoe@example.com"])
    assert "Hello Zoë O'Brien, here are" in text and "Hello Zoë O&#x27;Brien, here are" in html
    text, html = parts(got["ann@example.com"])
    assert "Hello" not in text and "Hello" not in html
    for part in (*parts(got["zoe@example.com"]), text, html):
        assert "__DIGEST_" not in part


async def test_story_dates_are_in_the_readers_zone_and_the_archive_copy_in_the_lists(paper: Site) -> None:
    got = await digest_for(paper, ("kiri@example.com", "", "Pacific/Auckland"), ("ann@example.com", "", None))
    note = re.compile(r"Harbour note number 0 of the week\n\s+(.+)\n")
    # Published 23:59 UTC on 1 March: already 2 March in Auckland, still 1 March in the list's UTC.
    assert note.search(parts(got["kiri@example.com"])[0])[1].endswith("2 Mar 2026")  # type: ignore[index]
    assert note.search(parts(got["ann@example.com"])[0])[1].endswith("1 Mar 2026")  # type: ignore[index]
    web = re.search(r"View in browser: (\S+)", parts(got["kiri@example.com"])[0])
    assert web is not None
    copy = (await paper.client.get(web[1].removeprefix(BASE))).text
    assert "Harbour note number 0 of the week" in copy and "1 Mar 2026" in copy and "Hello" not in copy


async def test_and_n_more_opens_a_page_listing_every_new_story_of_that_digest(paper: Site) -> None:
    got = await digest_for(paper, ("ann@example.com", "", None))
    text, html = parts(got["ann@example.com"])
    total = NOTES + 4  # the notes and the four samples
    assert f"And {total - 10} more new stories. See all {total}:" in text
    link = lxml.html.fromstring(html).xpath("//a[starts-with(normalize-space(), 'See all')]")[0].get("href")
    page = await paper.client.get(link.removeprefix(BASE))
    assert page.status_code == 200 and f"{total} in all" in page.text
    titles = [f"Harbour note number {n} of the week" for n in range(NOTES)]
    assert all(t in page.text for t in titles)
    assert "Harbour ferry switches to battery power" in page.text
    forged = link.replace("-", "-1", 1)
    shown = await paper.client.get(forged.removeprefix(BASE))
    assert shown.status_code == 200 and f"{total} in all" not in shown.text  # only the digest's own ten


async def test_long_words_and_urls_reach_the_reader_unchanged_and_wrap_in_their_card(paper: Site) -> None:
    got = await digest_for(paper, ("ann@example.com", "", None))
    text, html = parts(got["ann@example.com"])
    for part in (text, html):
        assert "\u200b" not in part
        assert LONG_WORD in part and LONG_URL in part
    card = lxml.html.fromstring(html).xpath(f"//td[.//p[contains(., '{LONG_WORD}')]]")[-1]
    assert "word-break: break-word" in card.get("style")


async def test_readers_see_titles_of_sources_and_authors_never_internal_names(paper: Site) -> None:
    got = await digest_for(paper, ("ann@example.com", "", None))
    text, html = parts(got["ann@example.com"])
    assert "seeds" not in text and "seeds" not in html
    assert re.search(
        r"Harbour note number 1 of the week\n\s+harbourtown\.example\.org · Aroha Ngata · ", text
    )
    link = lxml.html.fromstring(html).xpath("//a[starts-with(normalize-space(), 'See all')]")[0].get("href")
    every = (await paper.client.get(link.removeprefix(BASE))).text
    assert "coastline-post.example · Eilidh Mackay · 30 May 2024" in every and "seeds" not in every


def test_a_source_shows_as_its_feeds_title_else_its_site_never_its_internal_name() -> None:
    rss = (ROOT / "tests" / "fixtures" / "feeds" / "real-world" / "rss2email-fastmailstatus.rss").read_bytes()
    parsed = parse_feed("status", rss, now=datetime(2026, 3, 2, tzinfo=UTC))
    assert parsed.title and parsed.title != "status"
    assert source_label("status", {"status": parsed.title}, "https://x.example/a") == parsed.title
    assert source_label("desk", {}, "https://www.northgate.example/a") == "northgate.example"
    assert source_label("desk", {}, None) == ""


def rss(title: str, item: str) -> str:
    return (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>{title}</title>'
        "<link>https://wire.example.org/</link><description>x</description>"
        f"<item><title>{item}</title><link>https://wire.example.org/{len(item)}</link>"
        f"<pubDate>Sun, 01 Mar 2026 10:00:00 GMT</pubDate><description>{item}: out now.</description></item>"
        "</channel></rss>"
    )


async def test_a_feeds_title_reaches_the_digest_unless_the_config_names_the_source(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    (tmp_path / "bay.rss").write_text(rss("The Harbour &amp; Bay Wire", "Tide tables out"), encoding="utf-8")
    (tmp_path / "wire.rss").write_text(rss("wire.example.org feed", "Ferry strike ends"), encoding="utf-8")
    extra = (
        f'[[sources]]\nname = "bay"\nkind = "feed"\npath = "{tmp_path}/bay.rss"\n\n'
        f'[[sources]]\nname = "wire"\nkind = "feed"\npath = "{tmp_path}/wire.rss"\ntitle = "Harbour Wire"\n\n'
        '[[lists]]\nslug = "feeds"\nname = "Feeds"\nsources = ["bay", "wire"]\nmax_age = "3650d"\n'
    )
    async with open_site(tmp_path, f"sqlite:///{tmp_path}/digest.db", smtp_sink, extra=extra) as site:
        lst = await bootstrap.get_list(site.app, "feeds")
        async with site.app.db.write() as s:
            await readers.add_subscription(
                s, lst, "ann@example.com", readers.ReaderPrefs(), confirmed=True, now=site.clock()
            )
        await sources.ingest_sources(site.app, site.clock())
        await compose.compose(site.app, lst, site.clock(), manual=True)
        await site.deliver()
        text, _ = parts(site.mail_to("ann@example.com")[-1])
    assert re.search(r"Tide tables out\n\s+The Harbour & Bay Wire · 1 Mar 2026", text)
    assert re.search(r"Ferry strike ends\n\s+Harbour Wire · 1 Mar 2026", text)
    assert "bay ·" not in text and "wire ·" not in text


def test_an_arabic_story_in_an_english_digest_starts_at_the_right() -> None:
    view = EditionView(
        list_slug="demo", list_name="Demo", list_description="", language="en", direction="ltr",
        edition_date=date(2026, 3, 2),
        articles=[
            ArticleView("المجلس يوافق على جدول العبّارة الجديد", "https://a.example/1", "صحيفة الميناء",
                        datetime(2026, 3, 1, tzinfo=UTC), "قالت لجنة النقل إن التغيير يبدأ في أبريل.", None),
            ArticleView("Ferry timetable approved", "https://a.example/2", "Gazette",
                        datetime(2026, 3, 1, tzinfo=UTC), "The committee said so.", None),
        ],
        more_count=0, archive_url="https://n.example/archive/demo", web_url="https://n.example/archive/demo/1",
        base_url="https://n.example", postal_address="1 Street", contact="e@n.example", branding=Branding(),
    )  # fmt: skip
    html = render_edition(Templates(default_templates_dir()), view).html
    arabic, english = lxml.html.fromstring(html).xpath("//td[h2]")
    assert arabic.get("dir") == "rtl" and "text-align: right" in arabic.get("style")
    assert english.get("dir") == "ltr" and "text-align: left" in english.get("style")


def test_the_demo_shows_every_sample_story_and_a_real_looking_footer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIGEST_CONFIG", raising=False)
    shutil.copytree(ROOT / "src" / "digest" / "defaults" / "seeds", tmp_path / "seeds")
    runner = CliRunner()
    for args in (["init"], ["ingest"]):
        assert runner.invoke(app, args).exit_code == 0
    shown = runner.invoke(app, ["preview", "demo"])
    assert shown.exit_code == 0, shown.stdout
    for title in (
        "S.Korea, US, Japan urge repatriation of N.Korean workers",
        "Harbour ferry switches to battery power",
        "Victorian market hall reopens after restoration",
        "Council lets roadside verges grow wild to help pollinators",
    ):
        assert title in shown.stdout
    assert "Demo Digest, 1 Harbour Street, Kingsport" in shown.stdout
    assert "Set [sender]" not in shown.stdout and "__DIGEST_" not in shown.stdout


def test_personal_fills_names_safely_and_drops_the_greeting_line_without_one() -> None:
    text = f"Top\n\nHello {personal.NAME_MARKER}, hi.\n\nStory · {personal.date_marker(datetime(2026, 3, 1, 23, tzinfo=UTC), 'S')}\n"
    html = f'<p class="x">Hello {personal.NAME_MARKER}, hi.</p>\n<p>{personal.date_marker(datetime(2026, 3, 1, 23, tzinfo=UTC), "L")}</p>'
    t, h = personal.for_reader(text, html, name="<b>A&B</b> \\1", zone="Asia/Tokyo")
    assert "Hello <b>A&B</b> \\1, hi." in t and "Story · 2 Mar 2026" in t
    assert "Hello &lt;b&gt;A&amp;B&lt;/b&gt; \\1, hi." in h and "2 March 2026" in h
    t, h = personal.for_reader(text, html, name="  ", zone="UTC")
    assert t == "Top\n\nStory · 1 Mar 2026\n" and h == "<p>1 March 2026</p>"
