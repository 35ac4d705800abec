"""The bounce inbox against real databases and real SMTP: what each bounce does to the ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import mailbox
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select
from typer.testing import CliRunner

from conftest import free_port, write_config
from digest import (
    bootstrap,
    bounce_admin,
    bounce_listener,
    bounce_mailboxes,
    bounce_outcomes,
    bounces,
    compose,
    delivery,
    readers,
    sources,
    store,
)
from digest.cli import app as cli_app
from digest.config import load_config
from digest.errors import UsageError
from digest.models import Delivery, Edition, Event, Subscriber, Subscription
from digest.store import ledger, migrate
from digest.store import readers as readers_store
from digest.tokens import new_subscription_token, verp_address

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
KEY = "test-key"  # the key the fixtures' VERP addresses were made with
CONFIG_KEY = "test-secret-key-0123456789abcdef"  # conftest.write_config's secret key
DOMAIN = "bounce.example.com"
TOKEN = "rT3kq9Vb2LxP0sWm7yHc4NdA6eZf1GuJ8oKiQ5vBn_E"
REDACTED_TOKEN = "Zy8-wPq3Lm0Nc7Rt2Vx5Bk9Hd4Fg6Js1Ua_oEiKlMnQ"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
BOUNCE_SECTION = f'\n[bounce]\ndomain = "{DOMAIN}"\n'

# The delivery each fixture names (tests/test_inbound.py), and the reader it went to.
READERS = {
    1001: "nouser@example.org",
    1002: "disabled@example.net",
    1003: "gone@example.net",
    1004: "student@example.edu",
    1005: "ghost@outlook.com",
    1006: "no.such.user@gmail.com",
    1007: "reader@yahoo.com",
    1008: "slow@example.org",
    1009: "full@example.org",
    1010: "away@example.org",
    1011: "complainer@yahoo.com",
    1012: "redacted@yahoo.com",
    1013: "sent-to@example.com",
    1014: "victim@example.org",
    1015: "upper@example.org",
    1017: "multi@example.org",
}
TOKENS = {1011: TOKEN, 1012: REDACTED_TOKEN}


# ---------------------------------------------------------------- helpers


async def open_project(
    directory: Path, url: str, smtp_port: int | None = 2525, extra: str = ""
) -> bootstrap.App:
    cfg = load_config(
        write_config(directory, database_url=url, smtp_port=smtp_port, extra=BOUNCE_SECTION + extra),
        environ={},
    )
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    app = await bootstrap.open_app(cfg)
    # The fixtures were signed with KEY; the config's key signs what this project sends.
    return dataclasses.replace(app, keys=[*app.keys, KEY])


@pytest.fixture
async def project(tmp_path: Path, database_url: str) -> AsyncIterator[bootstrap.App]:
    app = await open_project(tmp_path, database_url)
    try:
        yield app
    finally:
        await app.db.close()


@pytest.fixture
async def lite(tmp_path: Path) -> AsyncIterator[bootstrap.App]:
    """SQLite only, for behaviour that does not depend on the store."""
    app = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db")
    try:
        yield app
    finally:
        await app.db.close()


async def seed(
    app: bootstrap.App,
    readers: dict[int, str],
    *,
    edition_status: str = "done",
    sent_at: datetime = NOW - timedelta(hours=1),
) -> int:
    """One confirmed reader per address and one sent digest per delivery id (ids chosen by the test)."""
    lst = await bootstrap.get_list(app, "demo")
    async with app.db.write() as s:
        edition = Edition(
            list_id=lst.id, article_ids=[], subject="Demo", html="<p>x</p>", text="x",
            created_at=sent_at, status=edition_status,
        )  # fmt: skip
        s.add(edition)
        people = {
            address: Subscriber(
                email=address, email_key=address.lower(), created_at=sent_at, updated_at=sent_at
            )
            for address in dict.fromkeys(readers.values())
        }
        s.add_all(people.values())
        await s.flush()
        tokens = {readers[i]: token for i, token in TOKENS.items() if i in readers}
        subs = {
            address: Subscription(
                subscriber_id=reader.id, list_id=lst.id, status="confirmed", watermark=5,
                token=tokens.get(address) or new_subscription_token(), signup_at=sent_at, confirmed_at=sent_at,
            )
            for address, reader in people.items()
        }  # fmt: skip
        s.add_all(subs.values())
        await s.flush()
        s.add_all(
            Delivery(
                id=delivery_id, kind="digest", edition_id=edition.id, subscription_id=subs[address].id,
                address=address, dedupe_key=f"test:{delivery_id}", from_seq=0, to_seq=5,
                status="sent", attempts=1, next_attempt_at=sent_at, sent_at=sent_at,
                message_id=f"<t{delivery_id}@news.example.com>", created_at=sent_at, updated_at=sent_at,
            )
            for delivery_id, address in readers.items()
        )  # fmt: skip
        await s.flush()
        return edition.id


def dsn(
    verp: str,
    rcpt: str,
    *,
    action: str = "failed",
    status: str = "5.1.1",
    diag: str = "550 5.1.1 user unknown",
    msgid: str = "b1",
    original: bytes = b"",
) -> bytes:
    """An RFC 3464 report as a receiving MTA writes it."""
    headers = original.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace") if original else "Subject: x"
    return (
        f"From: MAILER-DAEMON@mx.example.net\r\nTo: {verp}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{msgid}@mx.example.net>\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BND"\r\n\r\n'
        "--BND\r\nContent-Type: text/plain\r\n\r\nThis is the mail system at host mx.example.net.\r\n\r\n"
        "--BND\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diag}\r\n\r\n"
        f"--BND\r\nContent-Type: text/rfc822-headers\r\n\r\n{headers}\r\n\r\n--BND--\r\n"
    ).encode()


async def state(app: bootstrap.App, delivery_id: int) -> tuple[str, str, list[str]]:
    """(delivery status, reader status, event kinds oldest first) for one delivery."""
    async with app.db.read() as s:
        d = await s.get(Delivery, delivery_id)
        assert d is not None and d.subscription_id is not None
        sub = await s.get(Subscription, d.subscription_id)
        assert sub is not None
        reader = await s.get(Subscriber, sub.subscriber_id)
        assert reader is not None
        kinds = (
            await s.execute(select(Event.kind).where(Event.subscriber_id == reader.id).order_by(Event.id))
        ).scalars()
        return d.status, reader.status, list(kinds)


async def snapshot(app: bootstrap.App) -> tuple[Any, ...]:
    async with app.db.read() as s:
        events = (await s.execute(select(func.count()).select_from(Event))).scalar_one()
        deliveries = (await s.execute(select(Delivery.id, Delivery.status).order_by(Delivery.id))).all()
        readers = (
            await s.execute(
                select(Subscriber.id, Subscriber.status, Subscriber.bounce_score).order_by(Subscriber.id)
            )
        ).all()
    return events, deliveries, readers


def fixture_folder(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "bounces"
    folder.mkdir(exist_ok=True)
    for path in FIXTURES.glob("*.eml"):
        if not names or path.name in names:
            shutil.copy(path, folder / path.name)
    return folder


# ---------------------------------------------------------------- every fixture, on both stores

EXPECTED = {
    # delivery: (delivery status, reader status, the inbox's event on that reader)
    1001: ("failed", "bounced", "bounced"),  # Postfix 5.1.1
    1002: ("failed", "bounced", "bounced"),  # Exim text bounce 5.2.1 (flufl.bounce)
    1003: ("failed", "bounced", "bounced"),  # Exim DSN 5.0.0 refined to 5.1.1
    1004: ("failed", "bounced", "bounced"),  # Sendmail
    1005: ("failed", "bounced", "bounced"),  # Exchange 5.1.10
    1006: ("failed", "bounced", "bounced"),  # Gmail multi-line diagnostic
    1007: ("failed", "active", "policy_rejection"),  # Yahoo 5.7.9: never suppress
    1008: ("sent", "active", "delivery_delayed"),  # Action: delayed
    1009: ("failed", "active", "bounced"),  # 5.2.2 mailbox full: soft, scored 0.5
    1010: ("sent", "active", None),  # out of office
    1011: ("sent", "complained", "complained"),  # ARF via Original-Mail-From
    1012: ("sent", "complained", "complained"),  # ARF with only a List-Unsubscribe token
    1013: ("failed", "bounced", "bounced"),  # Final-Recipient is not who we sent to: VERP decides
    1014: ("sent", "active", None),  # forged VERP (names 1014 with a bad HMAC)
    1015: ("failed", "bounced", "bounced"),  # VERP folded to upper case
    1017: ("failed", "bounced", "bounced"),  # failed 5.1.1 plus delayed 4.2.2
}


async def test_every_fixture_ends_in_the_right_state_and_a_second_run_changes_nothing(
    project: bootstrap.App, tmp_path: Path
) -> None:
    await seed(project, READERS)
    result = await bounce_mailboxes.process_path(project, fixture_folder(tmp_path), NOW)

    assert dict(result.counts) == {
        "hard": 9, "policy": 1, "delayed": 1, "soft": 1, "auto_reply": 1, "complaint": 2,
        "forged": 1, "unsubscribe": 1,
    }  # fmt: skip
    assert result.messages == 17 and result.suppressed == 11 and result.failed_deliveries == 11
    for delivery_id, (delivery_status, reader_status, event) in EXPECTED.items():
        got = await state(project, delivery_id)
        assert got[:2] == (delivery_status, reader_status), (delivery_id, got)
        assert (event in got[2]) if event else got[2] == [], (delivery_id, got)
        if reader_status in ("bounced", "complained"):
            assert "suppressed" in got[2], (delivery_id, got)

    async with project.db.read() as s:
        hard = (
            await s.execute(select(Event).where(Event.delivery_id == 1001, Event.kind == "bounced"))
        ).scalar_one()
        soft_reader = await readers_store.subscriber_by_email(s, "full@example.org")
        complaint = (
            await s.execute(select(Event).where(Event.kind == "complained", Event.delivery_id == 1012))
        ).scalar_one()
        watermark = (
            await s.execute(select(Subscription.watermark).join(Delivery).where(Delivery.id == 1001))
        ).scalar_one()
        d1001 = await s.get(Delivery, 1001)
    assert hard.detail["status"] == "5.1.1" and hard.detail["code"] == 550 and hard.detail["at"] == "dsn"
    assert "5.1.1" in hard.detail["diagnostic"] and hard.detail["final_recipient"] == "nouser@example.org"
    assert hard.detail["raw"].startswith("Return-Path: <>") and hard.detail["raw_truncated"] is False
    assert d1001 is not None and d1001.smtp_code == 550 and "5.1.1" in (d1001.smtp_reply or "")
    assert watermark == 5  # the digest went out: its articles are not sent again
    assert soft_reader is not None and soft_reader.bounce_score == 0.5
    assert complaint.detail["attributed"] is True  # found by token, linked to the reader's latest digest

    before = await snapshot(project)
    again = await bounce_mailboxes.process_path(project, fixture_folder(tmp_path), NOW + timedelta(hours=1))
    assert again.counts == {"duplicate": 17} and await snapshot(project) == before

    # Raw messages are kept 30 days, then trimmed from the events (the rest of the record stays).
    assert await bounces.trim_raw_bounces(project, NOW + timedelta(days=29)) == 0
    assert await bounces.trim_raw_bounces(project, NOW + timedelta(days=31)) == 14
    async with project.db.read() as s:
        hard_after = await s.get(Event, hard.id)
    assert hard_after is not None and "raw" not in hard_after.detail and hard_after.detail["raw_trimmed"]
    assert hard_after.detail["status"] == "5.1.1"


async def test_mailto_unsubscribe_fixture_unsubscribes_its_reader_without_a_reply(
    lite: bootstrap.App, tmp_path: Path
) -> None:
    await seed(lite, {1011: "complainer@yahoo.com"})
    result = await bounce_mailboxes.process_path(lite, FIXTURES / "mailto-unsubscribe.eml", NOW)
    assert result.counts == {"unsubscribe": 1}
    async with lite.db.read() as s:
        sub = await readers_store.subscription_by_token(s, TOKEN)
        queued = (
            await s.execute(
                select(func.count()).select_from(Delivery).where(Delivery.kind == "transactional")
            )
        ).scalar_one()
    assert sub is not None and (sub.status, sub.unsubscribe_method) == ("unsubscribed", "mailto")
    assert queued == 0


async def test_policy_rejection_warns_with_delivery_and_edition_and_keeps_the_reader(
    lite: bootstrap.App, caplog: pytest.LogCaptureFixture
) -> None:
    edition = await seed(lite, {1007: "reader@yahoo.com"})
    with caplog.at_level(logging.WARNING, logger="digest.bounces"):
        await bounce_mailboxes.process_path(lite, FIXTURES / "yahoo-5.7.9-policy.eml", NOW)
    warning = next(r for r in caplog.records if "policy rejection" in r.getMessage())
    assert "delivery 1007" in warning.getMessage() and f"edition {edition}" in warning.getMessage()
    assert await state(lite, 1007) == ("failed", "active", ["policy_rejection"])


# ---------------------------------------------------------------- mailboxes and the report


async def test_maildir_and_mbox_of_mixed_bounces_give_a_correct_report(
    lite: bootstrap.App, tmp_path: Path
) -> None:
    await seed(lite, READERS)
    maildir = mailbox.Maildir(str(tmp_path / "Maildir"), create=True)
    for name in ("postfix-5.1.1.eml", "yahoo-5.7.9-policy.eml", "out-of-office.eml", "forged-verp.eml"):
        maildir.add((FIXTURES / name).read_bytes())
    key = maildir.add((FIXTURES / "delayed-4.4.7.eml").read_bytes())
    msg = maildir[key]
    msg.set_subdir("cur")  # one read message in cur/: processed too
    maildir[key] = msg
    maildir.close()
    box = mailbox.mbox(str(tmp_path / "bounces.mbox"), create=True)
    for name in (
        "gmail-5.1.1-multiline.eml",
        "mailbox-full-5.2.2.eml",
        "arf-complaint-yahoo.eml",
        "exim-dsn.eml",
    ):
        box.add((FIXTURES / name).read_bytes())
    box.close()

    from_maildir = await bounce_mailboxes.process_path(lite, tmp_path / "Maildir", NOW)
    from_mbox = await bounce_mailboxes.process_path(lite, tmp_path / "bounces.mbox", NOW)

    assert dict(from_maildir.counts) == {"hard": 1, "policy": 1, "auto_reply": 1, "forged": 1, "delayed": 1}
    assert dict(from_mbox.counts) == {"hard": 2, "soft": 1, "complaint": 1}
    summary = await bounce_admin.report(lite, NOW - timedelta(days=7))
    assert summary.by_class == {"hard": 3, "policy": 1, "delayed": 1, "soft": 1, "complaint": 1}
    assert summary.by_domain["example.org"] == {"hard": 1, "delayed": 1, "soft": 1}
    assert summary.by_domain["yahoo.com"] == {"policy": 1, "complaint": 1}
    assert summary.by_domain["gmail.com"] == {"hard": 1}
    assert (await bounce_admin.report(lite, NOW + timedelta(minutes=1))).total == 0


async def test_forged_and_unknown_verp_addresses_change_nothing_and_are_counted(
    lite: bootstrap.App, tmp_path: Path
) -> None:
    await seed(lite, {1001: "nouser@example.org", 1014: "victim@example.org"})
    real = verp_address(1001, KEY, DOMAIN)
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "a-forged.eml").write_bytes((FIXTURES / "forged-verp.eml").read_bytes())
    (folder / "b-tampered.eml").write_bytes(
        dsn(real[: -len(DOMAIN) - 2] + "0@" + DOMAIN, "nouser@example.org")
    )
    (folder / "c-unknown.eml").write_bytes(dsn(verp_address(999_999, KEY, DOMAIN), "x@example.org"))
    (folder / "d-other-key.eml").write_bytes(
        dsn(verp_address(1001, "not-our-key", DOMAIN), "nouser@example.org")
    )
    (folder / "e-not-ours.eml").write_bytes(dsn("postmaster@bounce.example.com", "nouser@example.org"))
    before = await snapshot(lite)
    result = await bounce_mailboxes.process_path(lite, folder, NOW)
    assert dict(result.counts) == {"forged": 3, "unknown_delivery": 1, "ignored": 1}
    assert await snapshot(lite) == before


# ---------------------------------------------------------------- scoring, complaints, operators


async def test_soft_bounces_are_scored_once_a_day_and_suppress_above_the_limit(
    project: bootstrap.App,
) -> None:
    """Mailman's rule through the database: +0.5 a day, reset after 7 quiet days, suppress above 5."""
    days = [0, 0, 1, 2, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    await seed(
        project, {2000 + i: "flaky@example.org" for i in range(len(days))}, sent_at=NOW - timedelta(days=1)
    )
    scores = []
    for i, day in enumerate(days):
        when = NOW + timedelta(days=day, hours=i % 2)
        raw = dsn(verp_address(2000 + i, KEY, DOMAIN), "flaky@example.org", status="4.2.2",
                  diag="452 4.2.2 mailbox full", msgid=f"soft{i}")  # fmt: skip
        handled = await bounces.handle_message(project, raw, None, when)
        async with project.db.read() as s:
            reader = await readers_store.subscriber_by_email(s, "flaky@example.org")
        assert reader is not None
        scores.append((handled.outcome, reader.bounce_score, reader.status))
    assert [score for _, score, _ in scores] == [
        0.5,
        0.5,
        1.0,
        1.5,
        0.5,
        1.0,
        1.5,
        2.0,
        2.5,
        3.0,
        3.5,
        4.0,
        4.5,
        5.0,
        5.5,
    ]
    assert all(status == "active" for _, _, status in scores[:-1])
    assert scores[-1] == ("soft", 5.5, "bounced")


async def test_unsuppress_records_the_reason_and_scoring_starts_again(project: bootstrap.App) -> None:
    await seed(project, {3001: "back@example.org", 3002: "back@example.org"})
    await bounces.handle_message(project, dsn(verp_address(3001, KEY, DOMAIN), "back@example.org"), None, NOW)
    with pytest.raises(UsageError, match="--reason"):
        await bounce_admin.unsuppress(project, "back@example.org", "  ", NOW)
    later = NOW + timedelta(days=1)
    assert (
        await bounce_admin.unsuppress(project, "Back@Example.org", "mailbox restored, reader asked", later)
        == "bounced"
    )
    with pytest.raises(UsageError, match="not suppressed"):
        await bounce_admin.unsuppress(project, "back@example.org", "again", later)
    async with project.db.read() as s:
        reader = await readers_store.subscriber_by_email(s, "back@example.org")
        assert reader is not None
        events = await readers_store.events_of(s, reader.id)
    assert (reader.status, reader.bounce_score) == ("active", 0.0)
    lifted = events[0]
    assert lifted.kind == "unsuppressed" and lifted.detail == {
        "previous": "bounced",
        "reason": "mailbox restored, reader asked",
    }
    # The hard bounce before the lift no longer counts: one soft bounce scores 0.5, not 1.5.
    soft = dsn(
        verp_address(3002, KEY, DOMAIN), "back@example.org", status="4.2.2", diag="452 full", msgid="s2"
    )
    await bounces.handle_message(project, soft, None, later + timedelta(hours=1))
    async with project.db.read() as s:
        reader = await readers_store.subscriber_by_email(s, "back@example.org")
    assert reader is not None and (reader.status, reader.bounce_score) == ("active", 0.5)


async def test_complaint_rate_warns_then_pauses_the_edition_and_alerts(
    project: bootstrap.App, caplog: pytest.LogCaptureFixture
) -> None:
    """STANDARDS item 23 with synthetic data: 1 complaint in 400 is 0.25%: a warning at the default
    0.3% pause threshold, a pause and an ALERT at a 0.2% threshold; a second complaint (0.5%)
    pauses at the default."""
    readers = {4000 + i: f"r{i}@example.com" for i in range(400)}
    edition = await seed(project, readers, edition_status="sending")
    async with project.db.write() as s:  # one more reader still queued: the edition is still sending
        await s.execute(
            Delivery.__table__.update().where(Delivery.id == 4399).values(status="pending", sent_at=None)
        )
    arf = (FIXTURES / "arf-complaint-yahoo.eml").read_bytes()

    def complaint(delivery_id: int) -> bytes:
        return arf.replace(
            b"bounces+1011.556a6f6b42@", verp_address(delivery_id, KEY, DOMAIN).split("@")[0].encode() + b"@"
        ).replace(b"Message-ID: <", f"Message-ID: <c{delivery_id}.".encode())

    with caplog.at_level(logging.WARNING, logger="digest.bounces"):
        first = await bounces.handle_message(project, complaint(4001), None, NOW)
    assert first.outcome == "complaint" and first.paused == ()
    assert any("complaint rate above 0.100%" in r.getMessage() for r in caplog.records)
    async with project.db.read() as s:
        assert (await s.get(Edition, edition)).status == "sending"  # type: ignore[union-attr]

    strict = dataclasses.replace(bounce_outcomes.BouncePolicy(), complaint_pause=0.002)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="digest.bounces"):
        second = await bounces.handle_message(project, complaint(4002), None, NOW, policy=strict)
    assert edition in second.paused
    alert = next(r for r in caplog.records if r.levelno == logging.CRITICAL)
    assert alert.getMessage().startswith("ALERT:") and f"edition {edition}" in alert.getMessage()
    async with project.db.read() as s:
        paused = await s.get(Edition, edition)
        readers_left = (
            await s.execute(
                select(func.count()).select_from(Subscriber).where(Subscriber.status == "complained")
            )
        ).scalar_one()
    assert (
        paused is not None and paused.status == "paused" and "complaint rate" in (paused.pause_reason or "")
    )
    assert readers_left == 2
    # Nothing more goes out from a paused edition.
    async with project.db.write() as s:
        assert await ledger.claim_deliveries(s, "w", NOW, timedelta(minutes=1), 10) == []


# ---------------------------------------------------------------- the SMTP inbox, end to end


async def test_inbox_accepts_only_bounce_and_unsubscribe_addresses_on_the_bounce_domain(
    lite: bootstrap.App,
) -> None:
    inbox = await bounce_listener.start_inbox(lite, "127.0.0.1", free_port())
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=inbox.port, timeout=5) as smtp:
            for address, code in [
                (f"postmaster@{DOMAIN}", 550),
                ("bounces+1.0123456789@elsewhere.example", 550),
                (f"someone@{DOMAIN}", 550),
                (f"BOUNCES+1.0123456789@{DOMAIN.upper()}", 250),
                (f"unsub+{TOKEN}@{DOMAIN}", 250),
            ]:
                await smtp.mail("")
                reply = await smtp.rcpt(address) if code == 250 else None
                if code != 250:
                    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                        await smtp.rcpt(address)
                    assert refused.value.code == 550 and "5.1.1" in refused.value.message
                else:
                    assert reply is not None and reply.code == 250
                await smtp.rset()
    finally:
        await inbox.stop()


class Relay:
    """A relay (aiosmtpd) that accepts every message, then reports one recipient as failed by
    sending an RFC 3464 DSN with aiosmtplib to the message's envelope sender at the inbox."""

    def __init__(self, inbox_port: int, dead: str) -> None:
        self.inbox_port, self.dead = inbox_port, dead
        self.accepted: list[tuple[str, list[str]]] = []
        self.bounced: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.accepted.append((envelope.mail_from, list(envelope.rcpt_tos)))
        if self.dead in envelope.rcpt_tos:
            task = asyncio.get_running_loop().create_task(
                self.bounce(envelope.mail_from, envelope.original_content)
            )
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return "250 2.0.0 queued"

    async def bounce(self, verp: str, original: bytes) -> None:
        report = dsn(verp, self.dead, diag=f"550 5.1.1 <{self.dead}>: Recipient address rejected: User unknown",
                     msgid="relay-1", original=original)  # fmt: skip
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.inbox_port, timeout=10) as smtp:
            await smtp.mail("")  # a DSN has a null envelope sender
            await smtp.rcpt(verp)
            await smtp.data(report)
        self.bounced.append(verp)


async def test_a_dsn_from_a_real_relay_reaches_the_inbox_and_suppresses_the_reader(
    tmp_path: Path, database_url: str
) -> None:
    """End to end over two real SMTP hops: compose, deliver through an aiosmtpd relay that accepts
    and later bounces one reader, the DSN arrives at the VERP address on the inbox listener."""
    inbox_port, relay_port = free_port(), free_port()
    app = await open_project(tmp_path, database_url, relay_port, extra=f'listen = "127.0.0.1:{inbox_port}"\n')
    relay = Relay(inbox_port, "dead@example.org")
    controller = Controller(relay, hostname="127.0.0.1", port=relay_port, decode_data=False)
    controller.start()
    host, port = bounce_listener.parse_listen(app.cfg.bounce.listen or "")
    inbox = await bounce_listener.start_inbox(app, host, port)
    try:
        await sources.ingest_sources(app, NOW)
        lst = await bootstrap.get_list(app, "demo")
        async with app.db.write() as s:
            for address in ("alive@example.org", "dead@example.org"):
                await readers.add_subscription(
                    s, lst, address, readers.ReaderPrefs(), confirmed=True, now=NOW
                )
        assert (await compose.compose(app, lst, NOW, manual=True)).deliveries == 2
        stats = await delivery.deliver_due(app, lambda: NOW)
        assert stats.sent == 2

        deadline = time.monotonic() + 15
        while inbox.report.counts["hard"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert inbox.report.counts == {"hard": 1}, inbox.report.counts
        envelope_senders = {rcpts[0]: sender for sender, rcpts in relay.accepted}
        assert relay.bounced == [envelope_senders["dead@example.org"]]
        assert envelope_senders["dead@example.org"].endswith(f"@{DOMAIN}")
        async with app.db.read() as s:
            rows = {d.address: d for d in (await s.execute(select(Delivery))).scalars()}
            dead = await readers_store.subscriber_by_email(s, "dead@example.org")
            alive = await readers_store.subscriber_by_email(s, "alive@example.org")
            assert dead is not None and alive is not None
            events = await readers_store.events_of(s, dead.id)
        assert (dead.status, alive.status) == ("bounced", "active")
        assert rows["dead@example.org"].status == "failed" and rows["alive@example.org"].status == "sent"
        bounced = next(e for e in events if e.kind == "bounced")
        assert bounced.delivery_id == rows["dead@example.org"].id
        assert (bounced.detail["at"], bounced.detail["bounce_class"], bounced.detail["status"]) == (
            "dsn",
            "hard",
            "5.1.1",
        )
        assert "Recipient address rejected" in bounced.detail["diagnostic"]
        assert any(e.kind == "suppressed" for e in events)
    finally:
        await inbox.stop()
        controller.stop()
        await app.db.close()


# ---------------------------------------------------------------- the command line

runner = CliRunner()


def cli(config: Path, *args: str, code: int = 0) -> str:
    result = runner.invoke(cli_app, ["--config", str(config), *args])
    output = result.stdout + result.stderr
    assert result.exit_code == code, output
    assert "Traceback" not in output
    return output


def test_cli_processes_a_folder_reports_and_unsuppresses(tmp_path: Path) -> None:
    async def setup() -> None:
        app = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db")
        try:
            await seed(app, {5001: "ann@example.org", 5002: "bob@example.net"}, sent_at=datetime.now(UTC))
        finally:
            await app.db.close()

    asyncio.run(setup())
    config = tmp_path / "digest.toml"
    box = tmp_path / "box"
    box.mkdir()
    (box / "ann.eml").write_bytes(dsn(verp_address(5001, CONFIG_KEY, DOMAIN), "ann@example.org", msgid="x1"))
    (box / "bob.eml").write_bytes(
        dsn(verp_address(5002, CONFIG_KEY, DOMAIN), "bob@example.net", action="delayed", status="4.4.7", diag="451 later", msgid="x2")
    )  # fmt: skip

    out = cli(config, "bounces", "process", str(box))
    assert "hard" in out and "delayed" in out and "1 reader(s) suppressed" in out
    report = cli(config, "bounces", "report", "--since", "1d")
    assert "example.org" in report and "example.net" in report and "2 event(s)" in report
    assert "reason" in cli(config, "subscribers", "unsuppress", "ann@example.org", "--reason", "fixed")
    assert "active" in cli(config, "subscribers", "show", "ann@example.org")

    missing = cli(config, "bounces", "process", str(tmp_path / "nowhere"), code=2)
    assert len(missing.strip().splitlines()) == 1 and "no such file" in missing
    assert "duration" in cli(config, "bounces", "report", "--since", "soon", code=2)
    assert "--reason" in cli(config, "subscribers", "unsuppress", "ann@example.org", code=2)
    assert "listen" in cli(config, "inbound", code=2)
    assert "Example" in cli(config, "bounces", "process", "--help")
