"""Privacy: a reader's token, name and zone reach only this service's own links, whatever a feed,
a pushed article or an operator's setting writes; erasure leaves the address in no column."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import io
import json
import re
import urllib.parse
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from typer.testing import CliRunner

from conftest import SmtpSink
from digest import bootstrap, bounces, compose, messages, personal, readers, readers_io, sources
from digest.bounce_outcomes import BouncePolicy, raw_detail
from digest.cli import app as cli_app
from digest.models import Event, Subscription
from digest.store import readers as readers_store
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
        assert (
            f"Hello {READER_NAME}," in parts["text/plain"] and f"Hello {READER_NAME}," in parts["text/html"]
        )
        assert not MARKER.search(parts["text/html"] + parts["text/plain"])
        # Quoted-printable (and every other part) keeps to 76 columns.
        body_lines = raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
        assert max(len(line) for line in body_lines) <= 76
    everything = "\n".join(bodies)
    assert "Harbour lights" in everything and "Pushed story 3" in everything
    assert "evil.example" in everything  # made safe, not dropped


def test_a_readers_own_name_cannot_bring_a_marker_into_their_mail() -> None:
    """The name is filled in after the rendering is sealed: it must not carry the token's marker."""
    name = "__DIGEST_TOK__DIGEST_TOKEN__EN__ Zelda __DIGEST_DATE_L1700000000__"
    text, html = personal.for_reader(
        f"Hello {personal.NAME_MARKER},\n", f"<p>Hello {personal.NAME_MARKER},</p>", name=name, zone="UTC"
    )
    assert "Zelda" in text and "Zelda" in html
    assert not MARKER.search(text + html)


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


# ---------------------------------------------------------------- erasure

ERASED = "Bob.Reader@Bücher.example"


def dsn(verp: str, rcpt: str) -> bytes:
    """A soft bounce (mailbox full) of one delivery, as a receiving MTA writes it."""
    return (
        f"From: MAILER-DAEMON@mx.example.net\r\nTo: {verp}\r\nSubject: Undelivered Mail\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <dsn1@mx.example.net>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BND"\r\n\r\n'
        f"--BND\r\nContent-Type: text/plain\r\n\r\nMail to <{rcpt}> could not be delivered.\r\n\r\n"
        "--BND\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        f"Diagnostic-Code: smtp; 552 5.2.2 <{rcpt}>: mailbox full\r\n\r\n--BND--\r\n"
    ).encode()


def arf(verp: str, rcpt: str, original: bytes) -> bytes:
    """A mailbox provider's complaint (RFC 5965) about one digest, quoting it whole."""
    return (
        (
            "From: feedback@arf.mail.example.net\r\nTo: fbl@news.example.com\r\nSubject: FW: complaint\r\n"
            "Date: Fri, 27 Nov 2026 11:00:00 +0000\r\nMessage-ID: <arf1@arf.mail.example.net>\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary="P"\r\n\r\n'
            f"--P\r\nContent-Type: text/plain\r\n\r\nA complaint from {rcpt}.\r\n\r\n"
            "--P\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n"
            f"Original-Mail-From: <{verp}>\r\nOriginal-Rcpt-To: {rcpt}\r\n\r\n"
            "--P\r\nContent-Type: message/rfc822\r\n\r\n"
        ).encode()
        + original
        + b"\r\n--P--\r\n"
    )


async def stored_mentions(app: bootstrap.App, needles: list[str]) -> list[str]:
    """Every (table.column) of every table in the database whose text holds one of the needles."""

    def columns(conn: Any) -> list[tuple[str, str]]:
        found = inspect(conn)
        return [(t, c["name"]) for t in found.get_table_names() for c in found.get_columns(t)]

    async with app.db.read() as s:
        conn = await s.connection()
        hits = []
        for table, column in await conn.run_sync(columns):
            for needle in needles:
                stmt = text(f'SELECT count(*) FROM "{table}" WHERE lower(CAST("{column}" AS TEXT)) LIKE :n')
                if (await s.execute(stmt, {"n": f"%{needle.lower()}%"})).scalar_one():
                    hits.append(f"{table}.{column} holds {needle}")
    return hits


def spellings(address: str) -> list[str]:
    wire = messages.wire_address(address)
    return sorted({f for a in (address, wire) for f in (a, json.dumps(a)[1:-1], a.casefold())})


async def reader_with_a_history(site: Site) -> None:
    """Bob signs up himself (confirmation, welcome), gets two digests, one bounces, one he reports."""
    answer = await site.signup_json(ERASED, ["demo", "tech"], name="Bob Reader")
    assert answer.status_code < 300, answer.text
    await site.deliver()
    await site.confirm(messages.wire_address(ERASED))  # the mail went to the wire form
    await site.deliver()  # the welcome
    await sources.ingest_sources(site.app, site.clock())
    for slug in ("demo", "tech"):
        await compose.compose(site.app, await bootstrap.get_list(site.app, slug), site.clock(), manual=True)
    await site.deliver()
    wire = messages.wire_address(ERASED)
    got = [m for m in site.sink.messages if wire in m.rcpt_tos]
    assert len(got) == 4, [
        email.message_from_bytes(m.data)["Subject"] for m in got
    ]  # confirm, welcome, 2 digests
    bounced, reported = got[2], got[3]
    await bounces.handle_message(site.app, dsn(bounced.mail_from, wire), None, site.clock())
    await bounces.handle_message(site.app, arf(reported.mail_from, wire, reported.data), None, site.clock())
    async with site.app.db.read() as s:
        kinds = {e.kind for e in (await s.execute(select(Event))).scalars()}
    assert {"bounced", "complained", "confirmed"} <= kinds
    # A bounce no delivery claimed, whose raw message is not UTF-8 and so is kept in base64.
    binary = dsn("postmaster@news.example.com", wire).replace(b"Mail to", b"\xff\xfe Mail to")
    async with site.app.db.write() as s:
        await readers_store.add_event(
            s, "unmatched_bounce", site.clock(), subscriber_id=None, **raw_detail(binary, BouncePolicy())
        )
    assert await stored_mentions(site.app, spellings(ERASED))  # the search finds what is there


async def binary_raws_naming(app: bootstrap.App, address: str) -> int:
    async with app.db.read() as s:
        events = (await s.execute(select(Event))).scalars().all()
    raws = [base64.b64decode(e.detail["raw"]) for e in events if e.detail.get("raw_base64")]
    return sum(address.lower().encode() in r.lower() for r in raws)


@pytest.mark.parametrize("how", ["cli", "api"])
async def test_erasure_leaves_the_address_in_no_column_of_any_table(site: Site, how: str) -> None:
    await reader_with_a_history(site)
    assert await binary_raws_naming(site.app, messages.wire_address(ERASED)) == 1
    if how == "api":
        answer = await site.client.delete(
            f"/api/subscribers/{urllib.parse.quote(ERASED)}?erase=true", headers=auth()
        )
        assert answer.status_code == 200 and answer.json()["erased"] is True, answer.text
    else:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            cli_app,
            [
                "--config",
                str(site.app.cfg.base_dir / "digest.toml"),
                "subscribers",
                "remove",
                ERASED,
                "--yes",
            ],
        )
        assert result.exit_code == 0, result.output
    assert await stored_mentions(site.app, spellings(ERASED)) == []
    assert await binary_raws_naming(site.app, messages.wire_address(ERASED)) == 0
    async with site.app.db.read() as s:
        subs = (await s.execute(select(Subscription))).scalars().all()
    assert all(not (x.signup_ip or x.signup_user_agent or x.confirm_ip or x.confirm_user_agent) for x in subs)
    # An operator (API or CLI) may not add the address back; the reader may, through double opt-in.
    again = await site.client.post(
        "/api/subscribers", headers=auth(), json={"email": ERASED, "lists": ["demo"], "confirmed": True}
    )
    assert again.status_code >= 400 and "erased" in again.text
    pending = await site.client.post(
        "/api/subscribers", headers=auth(), json={"email": ERASED, "lists": ["demo"]}
    )
    assert pending.status_code >= 400 and "erased" in pending.text
    lst = await bootstrap.get_list(site.app, "demo")
    rows = io.StringIO(f"email,name\n{ERASED.upper()},Bob\n")
    imported = await readers_io.import_csv(site.app, lst, rows, confirmed=True, apply=True, now=site.clock())
    assert imported.added == 0 and "erased" in imported.bad[0][1]
    assert (await site.signup_json(ERASED)).status_code < 300
    assert await site.sub(ERASED) is not None
