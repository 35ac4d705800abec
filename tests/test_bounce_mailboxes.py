"""Real-world bounces against real databases, mailboxes and the SMTP inbox: a cron job's reruns do
only the new mail, a bad message never stops anything, and every class ends in the right state."""

from __future__ import annotations

import asyncio
import mailbox
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import free_port
from digest import bootstrap, bounce_admin, bounce_listener, bounce_mailboxes, bounces
from digest.cli import app as cli_app
from digest.inbound import analyse
from digest.models import Event, Subscriber
from digest.store import readers as readers_store
from digest.tokens import verp_address
from test_bounce_corpus import CORPUS, ROWS, addressed
from test_bounces import CONFIG_KEY, DOMAIN, KEY, NOW, READERS, dsn, open_project, seed, snapshot, state

REAL = CORPUS / "real-world"
LATIN1 = (REAL / "latin1-diagnostic.eml").read_bytes()
# Deliveries 9000+n are the corpus rows (test_bounce_corpus.addressed); 1101 and 1114-1116 are named
# inside the Exim, JMRP and SES fixtures.
CORPUS_READERS = {9000 + n: f"reader{n}@example.org" for n in range(len(ROWS))}
NAMED = {1101: "moved.on@example.com", 1114: "jmrp@hotmail.com", 1116: "nobody@example.com"}


@pytest.fixture
async def lite(tmp_path: Path) -> AsyncIterator[bootstrap.App]:
    app = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db")
    try:
        yield app
    finally:
        await app.db.close()


@pytest.fixture
async def project(tmp_path: Path, database_url: str) -> AsyncIterator[bootstrap.App]:
    app = await open_project(tmp_path, database_url)
    try:
        yield app
    finally:
        await app.db.close()


def bounce_for(delivery_id: int, n: int, *, diag: str = "550 5.1.1 user unknown") -> bytes:
    return dsn(
        verp_address(delivery_id, KEY, DOMAIN), f"r{delivery_id}@example.org", diag=diag, msgid=f"m{n}"
    )


def maildir_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_the_whole_corpus_through_an_mbox_ends_in_the_states_read_from_each_message(
    project: bootstrap.App, tmp_path: Path
) -> None:
    """Every real-world message, as one mbox, on both stores: nothing raises, every dead mailbox
    is suppressed, no live reader is, and each message's outcome is the kind written down for it."""
    await seed(project, {**CORPUS_READERS, **NAMED, **READERS})
    box = mailbox.mbox(str(tmp_path / "corpus.mbox"), create=True)
    for n, row in enumerate(ROWS):
        box.add(addressed((CORPUS / row["file"]).read_bytes(), 9000 + n))
    box.close()

    result = await bounce_mailboxes.process_path(project, tmp_path / "corpus.mbox", NOW)

    assert result.errors == [] and result.messages == len(ROWS)
    async with project.db.read() as s:
        statuses = dict((await s.execute(select(Subscriber.email, Subscriber.status))).all())
    everyone = {**CORPUS_READERS, **NAMED, **READERS}
    for n, row in enumerate(ROWS):
        named = analyse(addressed((CORPUS / row["file"]).read_bytes(), 9000 + n), None, [KEY]).delivery_id
        if row["kind"] in ("complaint", "unsubscribe") or named is None:
            continue
        assert statuses[everyone[named]] == ("bounced" if row["class"] == "hard" else "active"), row
    assert statuses["moved.on@example.com"] == "bounced"  # found through Envelope-to
    assert statuses["jmrp@hotmail.com"] == "complained"  # Microsoft's JMRP counts as a complaint
    wanted = {"ignored": {"ignored", "forged"}, "bounce": {"hard", "soft", "policy", "unknown"}}
    outcomes = sum(result.counts.values())
    assert outcomes == len(ROWS) and result.counts["unparsed"] == 1
    assert result.counts["complaint"] == sum(r["kind"] == "complaint" for r in ROWS)
    assert result.counts["hard"] == sum(r["class"] == "hard" for r in ROWS if r["kind"] == "bounce")
    assert set(result.counts) <= set().union(*wanted.values(), {"delayed", "auto_reply", "complaint",
                                                               "unsubscribe", "unparsed"})  # fmt: skip

    before = await snapshot(project)
    again = await bounce_mailboxes.process_path(project, tmp_path / "corpus.mbox", NOW)
    assert again.messages == 0 and await snapshot(project) == before  # read from where it stopped
    rescanned = await bounce_mailboxes.process_path(project, tmp_path / "corpus.mbox", NOW, rescan=True)
    assert rescanned.counts == {"duplicate": len(ROWS)} and await snapshot(project) == before


async def test_a_maildir_run_moves_what_it_processed_to_cur_as_seen_and_a_rerun_does_nothing(
    lite: bootstrap.App, tmp_path: Path
) -> None:
    await seed(lite, {1: "ann@example.org", 2: "bob@example.org", 3: "cy@example.org"})
    root = tmp_path / "Maildir"
    mailbox.Maildir(str(root), create=True).close()
    (root / "new" / "1700000001.a.host").write_bytes(bounce_for(1, 1))
    (root / "cur" / "1700000002.b.host:2,").write_bytes(bounce_for(2, 2, diag="552 5.2.2 full"))
    (root / "cur" / "1700000003.c.host:2,S").write_bytes(bounce_for(3, 3))  # seen: an earlier run's
    (root / "tmp" / "1700000004.d.host").write_bytes(bounce_for(3, 4))  # still being written
    (root / "new" / ".1700000005.e.host").write_bytes(bounce_for(3, 5))  # a dot file is not mail

    result = await bounce_mailboxes.process_path(lite, root, NOW)

    assert dict(result.counts) == {"hard": 1, "soft": 1} and result.moved == 2
    assert maildir_files(root) == [
        "cur/1700000001.a.host:2,S",
        "cur/1700000002.b.host:2,S",
        "cur/1700000003.c.host:2,S",
        "new/.1700000005.e.host",
        "tmp/1700000004.d.host",
    ]
    assert (await state(lite, 3))[1] == "active"  # the seen message was not read
    before = await snapshot(lite)
    assert (await bounce_mailboxes.process_path(lite, root, NOW)).messages == 0
    assert await snapshot(lite) == before
    rescanned = await bounce_mailboxes.process_path(lite, root, NOW, rescan=True)
    assert dict(rescanned.counts) == {"duplicate": 2, "hard": 1}  # the seen one was never recorded


async def test_processed_maildir_messages_can_go_to_a_folder_of_their_own(
    lite: bootstrap.App, tmp_path: Path
) -> None:
    await seed(lite, {1: "ann@example.org"})
    root = tmp_path / "Maildir"
    mailbox.Maildir(str(root), create=True).close()
    (root / "new" / "1700000001.a.host").write_bytes(bounce_for(1, 1))
    result = await bounce_mailboxes.process_path(lite, root, NOW, processed_folder="Processed")
    assert result.counts == {"hard": 1}
    assert maildir_files(root) == [".Processed/cur/1700000001.a.host:2,S"]


async def test_an_mbox_is_processed_incrementally_and_a_rewritten_file_from_its_start(
    lite: bootstrap.App, tmp_path: Path
) -> None:
    await seed(lite, {n: f"r{n}@example.org" for n in range(1, 6)})
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(str(path), create=True)
    for n in (1, 2):
        box.add(bounce_for(n, n))
    box.close()
    assert (await bounce_mailboxes.process_path(lite, path, NOW)).counts == {"hard": 2}

    box = mailbox.mbox(str(path))  # the MTA appends two more
    for n in (3, 4):
        box.add(bounce_for(n, n))
    box.close()
    assert (await bounce_mailboxes.process_path(lite, path, NOW)).counts == {"hard": 2}
    assert (await bounce_mailboxes.process_path(lite, path, NOW)).messages == 0

    path.unlink()  # rotated: a new file with one old and one new message
    box = mailbox.mbox(str(path), create=True)
    box.add(bounce_for(4, 4))
    box.add(bounce_for(5, 5))
    box.close()
    assert (await bounce_mailboxes.process_path(lite, path, NOW)).counts == {"duplicate": 1, "hard": 1}


async def test_a_latin1_byte_neither_stops_the_mailbox_nor_loses_the_messages_after_it(
    lite: bootstrap.App, tmp_path: Path
) -> None:
    """The DSN whose Diagnostic-Code holds `Empf\\xe4nger unbekannt` is recorded (hard), the
    messages after it are processed, and a rerun changes nothing."""
    await seed(lite, {1: "weg@example.de", 2: "ann@example.org", 3: "bob@example.org"})
    root = tmp_path / "Maildir"
    maildir = mailbox.Maildir(str(root), create=True)
    for raw in (
        addressed(LATIN1, 1),
        (REAL / "unreadable-null-sender.eml").read_bytes().replace(b"To: ", f"To: {verp_address(2, KEY, DOMAIN)}, ".encode(), 1),
        bounce_for(3, 3),
        b"\xff\xfe\x00\x00 not mail at all \x80\x81\n\n\x00",
    ):  # fmt: skip
        maildir.add(raw)
    maildir.close()

    result = await bounce_mailboxes.process_path(lite, root, NOW)

    assert dict(result.counts) == {"hard": 2, "unparsed": 1, "ignored": 1} and result.errors == []
    assert not os.listdir(root / "new")
    assert (await state(lite, 1))[1:] == ("bounced", ["bounced", "suppressed"])
    assert (await state(lite, 2))[1:] == ("active", ["bounce_unparsed"])
    async with lite.db.read() as s:
        event = (
            await s.execute(select(Event).where(Event.delivery_id == 1, Event.kind == "bounced"))
        ).scalar_one()
    assert "Empfänger unbekannt" in event.detail["diagnostic"]
    assert event.detail["raw_base64"] is True  # not UTF-8: the bytes are kept exactly


async def test_the_inbox_answers_250_to_a_latin1_dsn_and_records_it(lite: bootstrap.App) -> None:
    """A real aiosmtpd inbox: the bad byte is no reason for a 451 the sending MTA would retry forever."""
    await seed(lite, {1: "weg@example.de"})
    inbox = await bounce_listener.start_inbox(lite, "127.0.0.1", free_port())
    verp = verp_address(1, KEY, DOMAIN)
    try:
        for _ in range(2):  # the MTA sends it again: still 250, recorded once
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=inbox.port, timeout=10) as smtp:
                await smtp.mail("")
                await smtp.rcpt(verp)
                reply = await smtp.data(LATIN1)
            assert reply.code == 250
    finally:
        await inbox.stop()
    assert inbox.report.counts == {"hard": 1, "duplicate": 1}
    assert (await state(lite, 1))[1] == "bounced"


async def test_a_jmrp_report_to_the_feedback_address_reaches_the_inbox_as_a_complaint(
    lite: bootstrap.App,
) -> None:
    await seed(lite, {1114: "jmrp@hotmail.com"})
    inbox = await bounce_listener.start_inbox(lite, "127.0.0.1", free_port())
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=inbox.port, timeout=10) as smtp:
            await smtp.sendmail(
                "staff@hotmail.com", [f"bounces+fbl@{DOMAIN}"], (REAL / "jmrp-complaint.eml").read_bytes()
            )
    finally:
        await inbox.stop()
    assert inbox.report.counts == {"complaint": 1}
    assert (await state(lite, 1114))[1] == "complained"


async def test_provider_delivery_notices_are_not_bounces_and_their_bounce_notices_are(
    lite: bootstrap.App, tmp_path: Path
) -> None:
    await seed(lite, {1113: "happy@example.com", 1116: "nobody@example.com"})
    folder = tmp_path / "ses"
    folder.mkdir()
    for name in ("ses-delivery-notice.eml", "ses-bounce-notice.eml"):
        (folder / name).write_bytes(
            addressed((REAL / name).read_bytes(), 1113 if "delivery" in name else 1116)
        )
    result = await bounce_mailboxes.process_path(lite, folder, NOW)
    assert dict(result.counts) == {"hard": 1, "ignored": 1}
    assert (await state(lite, 1113))[:2] == ("sent", "active")
    assert (await state(lite, 1116))[:2] == ("failed", "bounced")


async def test_the_report_and_the_reader_say_why_each_bounce_was_classed_as_it_was(
    lite: bootstrap.App, tmp_path: Path
) -> None:
    await seed(lite, {1: "gone.reader@outlook.com", 2: "busy@example.org", 3: "alive@example.org"})
    folder = tmp_path / "why"
    folder.mkdir()
    for n, name in enumerate(
        ["outlook-5.5.0-mailbox-unavailable.eml", "conflict-5.1.1-over-quota.eml", "conflict-5.1.1-over-blacklisted-ip.eml"], 1
    ):  # fmt: skip
        (folder / name).write_bytes(addressed((REAL / name).read_bytes(), n))
    await bounce_mailboxes.process_path(lite, folder, NOW)
    summary = await bounce_admin.report(lite, datetime(2000, 1, 1, tzinfo=UTC))
    assert summary.by_reason == {
        ("hard", "user unknown"): 1,
        ("soft", "mailbox full"): 1,
        ("policy", "blocked by the receiver"): 1,
    }
    async with lite.db.read() as s:
        reader = await readers_store.subscriber_by_email(s, "gone.reader@outlook.com")
        assert reader is not None
        events = await readers_store.events_of(s, reader.id)
    bounced = next(e for e in events if e.kind == "bounced")
    assert bounced.detail["why"] == 'hard: user unknown ("mailbox unavailable" in the reply)'


def test_the_cli_shows_reasons_and_exits_0_over_a_mailbox_with_a_bad_message(tmp_path: Path) -> None:
    async def setup() -> None:
        app = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db")
        try:
            await seed(app, {5001: "weg@example.de", 5002: "bob@example.net"}, sent_at=datetime.now(UTC))
        finally:
            await app.db.close()

    asyncio.run(setup())
    config = tmp_path / "digest.toml"
    box = mailbox.mbox(str(tmp_path / "bounces.mbox"), create=True)
    box.add(LATIN1.replace(b"To: <bounces@", f"To: <{verp_address(5001, CONFIG_KEY, DOMAIN)}>, <x@".encode()))
    box.add(dsn(verp_address(5002, CONFIG_KEY, DOMAIN), "bob@example.net", msgid="later"))
    box.close()
    runner = CliRunner()

    first = runner.invoke(
        cli_app, ["--config", str(config), "bounces", "process", str(tmp_path / "bounces.mbox")]
    )
    assert first.exit_code == 0, first.output
    assert "2 reader(s) suppressed" in first.output
    again = runner.invoke(
        cli_app, ["--config", str(config), "bounces", "process", str(tmp_path / "bounces.mbox")]
    )
    assert again.exit_code == 0 and "0 message(s)" in again.output
    report = runner.invoke(cli_app, ["--config", str(config), "bounces", "report", "--since", "1d"])
    assert report.exit_code == 0 and "user unknown" in report.output
    shown = runner.invoke(
        cli_app, ["--config", str(config), "subscribers", "show", "weg@example.de"], env={"COLUMNS": "250"}
    )
    assert shown.exit_code == 0 and "hard: user unknown (5.1.1 in the reply)" in shown.output
    assert "Empfänger unbekannt" in shown.output


async def test_a_mailbox_that_keeps_failing_for_no_stated_reason_is_suppressed_in_the_end(
    project: bootstrap.App,
) -> None:
    """`unknown` is no dead end: a permanent failure nobody can read scores like a soft bounce."""
    await seed(project, {7000 + day: "mystery@example.org" for day in range(11)})
    outcomes = []
    for day in range(11):
        raw = dsn(verp_address(7000 + day, KEY, DOMAIN), "mystery@example.org", status="5.0.0",
                  diag="550 Requested action not taken", msgid=f"u{day}")  # fmt: skip
        handled = await bounces.handle_message(project, raw, None, NOW + timedelta(days=day))
        outcomes.append((handled.outcome, handled.suppressed))
    assert outcomes[:10] == [("unknown", False)] * 10
    assert outcomes[10] == ("unknown", True)
    assert (await state(project, 7010))[1] == "bounced"
