"""The delivery engine against a real SMTP server that misbehaves on purpose."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import SmtpSink, free_port, write_config
from digest import bootstrap, compose, delivery, editions, readers, sources, store
from digest.config import load_config
from digest.models import Delivery, Edition, Event, Subscriber
from digest.store import migrate

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


async def open_project(tmp_path: Path, url: str, smtp: str) -> bootstrap.App:
    path = write_config(tmp_path, database_url=url, smtp_port=None)
    text = path.read_text()
    start = text.index("[capture]")
    end = text.index("[web]")
    path.write_text(text[:start] + smtp + "\n[capture]\nenabled = false\n\n" + text[end:])
    cfg = load_config(path, environ={})
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    return await bootstrap.open_app(cfg)


def relay(port: int, **extra: str) -> str:
    lines = ['host = "127.0.0.1"', f"port = {port}", 'security = "none"', 'timeout = "1s"', "concurrency = 2"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "[smtp]\n" + "\n".join(lines) + "\n"


@pytest.fixture
async def app(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[bootstrap.App]:
    a = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db", relay(smtp_sink.port))
    try:
        yield a
    finally:
        await a.db.close()


async def compose_for(app: bootstrap.App, *names: str) -> None:
    await sources.ingest_sources(app, NOW)
    lst = await bootstrap.get_list(app, "demo")
    async with app.db.write() as s:
        for name in names:
            await readers.add_subscription(
                s, lst, f"{name}@example.com", readers.ReaderPrefs(), confirmed=True, now=NOW
            )
    await compose.compose(app, lst, NOW, manual=True)


async def statuses(app: bootstrap.App) -> dict[str, str]:
    async with app.db.read() as s:
        return {d.address: d.status for d in (await s.execute(select(Delivery))).scalars()}


async def test_421_on_one_reader_reconnects_and_the_rest_of_the_batch_goes_out(
    app: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    smtp_sink.reply_for = lambda a, n: "421 4.3.2 shutting down" if a == "r3@example.com" and n == 1 else None
    await compose_for(app, *(f"r{i}" for i in range(8)))
    first = await delivery.deliver_due(app, lambda: NOW)
    assert (first.sent, first.deferred) == (7, 1)
    assert (await statuses(app))["r3@example.com"] == "deferred"
    later = await delivery.deliver_due(app, lambda: NOW + timedelta(hours=1))
    assert later.sent == 1
    assert len({r for m in smtp_sink.messages for r in m.rcpt_tos}) == 8


async def test_452_is_deferred_and_retried(app: bootstrap.App, smtp_sink: SmtpSink) -> None:
    smtp_sink.reply_for = lambda a, n: "452 4.2.2 Mailbox full" if n == 1 else None
    await compose_for(app, "ann")
    assert (await delivery.deliver_due(app, lambda: NOW)).deferred == 1
    async with app.db.read() as s:
        d = (await s.execute(select(Delivery))).scalar_one()
    assert d.next_attempt_at > NOW + timedelta(minutes=3)
    assert (await delivery.deliver_due(app, lambda: NOW + timedelta(hours=1))).sent == 1


async def test_550_user_unknown_fails_and_suppresses_that_reader(
    app: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    smtp_sink.reply_for = lambda a, n: "550 5.1.1 User unknown" if a == "gone@example.com" else None
    await compose_for(app, "gone", "ann")
    stats = await delivery.deliver_due(app, lambda: NOW)
    assert (stats.sent, stats.failed) == (1, 1)
    async with app.db.read() as s:
        reader = (
            await s.execute(select(Subscriber).where(Subscriber.email == "gone@example.com"))
        ).scalar_one()
        kinds = {
            e.kind for e in (await s.execute(select(Event).where(Event.subscriber_id == reader.id))).scalars()
        }
    assert reader.status == "bounced"
    assert {"bounced", "suppressed"} <= kinds


async def test_554_5_7_1_to_everyone_pauses_the_edition_instead_of_failing_the_list(
    app: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    smtp_sink.reply_for = lambda a, n: "554 5.7.1 DMARC policy violation"
    await compose_for(app, *(f"r{i}" for i in range(30)))
    stats = await delivery.deliver_due(app, lambda: NOW)
    assert stats.paused and "5.7.1" in stats.paused[0]
    assert stats.failed == 0
    async with app.db.read() as s:
        edition = (await s.execute(select(Edition))).scalar_one()
    assert edition.status == "paused" and "5.7.1" in (edition.pause_reason or "")
    assert set((await statuses(app)).values()) == {"pending"}
    smtp_sink.reply_for = None
    await editions.resume_edition(app, edition.id, NOW)
    assert (await delivery.deliver_due(app, lambda: NOW)).sent == 30


async def test_a_server_that_stalls_after_data_leaves_the_message_unknown_and_unsent(
    app: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    smtp_sink.data_delay = lambda rcpts: 2.5
    await compose_for(app, "ann")
    assert (await delivery.deliver_due(app, lambda: NOW)).unknown == 1
    smtp_sink.data_delay = None
    again = await delivery.deliver_due(app, lambda: NOW + timedelta(days=1))
    assert again.counts() == dict.fromkeys(again.counts(), 0)
    assert (await statuses(app)) == {"ann@example.com": "unknown"}


async def test_a_refused_relay_fails_over_to_the_next_one(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    dead = free_port()
    relays = (
        f'[[smtp.relays]]\nhost = "127.0.0.1"\nport = {dead}\nsecurity = "none"\ntimeout = "1s"\n\n'
        f'[[smtp.relays]]\nhost = "127.0.0.1"\nport = {smtp_sink.port}\nsecurity = "none"\ntimeout = "1s"\n'
    )
    app = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db", relays)
    try:
        await compose_for(app, "ann", "bob", "cy")
        stats = await delivery.deliver_due(app, lambda: NOW)
        assert stats.sent == 3
        async with app.db.read() as s:
            used = {d.relay for d in (await s.execute(select(Delivery))).scalars()}
        assert used == {f"127.0.0.1:{smtp_sink.port}"}
    finally:
        await app.db.close()


async def test_starttls_required_but_not_offered_sends_nothing_in_plaintext(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    smtp = relay(smtp_sink.port).replace('security = "none"', 'security = "starttls"')
    app = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db", smtp)
    try:
        await compose_for(app, "ann")
        stats = await delivery.deliver_due(app, lambda: NOW)
        assert stats.deferred == 1 and smtp_sink.messages == []
        async with app.db.read() as s:
            d = (await s.execute(select(Delivery))).scalar_one()
        assert "STARTTLS" in (d.smtp_reply or "")
    finally:
        await app.db.close()


async def test_rate_limit_spaces_messages(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    app = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db", relay(smtp_sink.port, rate="20"))
    try:
        await compose_for(app, *(f"r{i}" for i in range(12)))
        import time

        started = time.monotonic()
        assert (await delivery.deliver_due(app, lambda: NOW)).sent == 12
        assert time.monotonic() - started >= 0.5  # 12 messages at 20/s need at least ~0.55 s
    finally:
        await app.db.close()


async def test_a_static_cap_per_recipient_domain_spaces_that_domain_only(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    smtp = relay(smtp_sink.port) + '\n[delivery]\ndomain_rates = { "example.com" = 10 }\n'
    app = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db", smtp)
    try:
        await compose_for(app, *(f"r{i}" for i in range(8)))
        import time

        started = time.monotonic()
        assert (await delivery.deliver_due(app, lambda: NOW)).sent == 8
        assert time.monotonic() - started >= 0.6  # 8 messages to example.com at 10/s
    finally:
        await app.db.close()


@pytest.mark.parametrize("smtputf8", [True, False], ids=["relay-with-smtputf8", "relay-without"])
async def test_idn_domains_go_out_in_ascii_and_a_non_ascii_mailbox_needs_smtputf8(
    tmp_path: Path, smtputf8: bool
) -> None:
    """The domain is sent in its A-label form either way; a non-ASCII local part goes out only
    through a relay that offers SMTPUTF8, and otherwise fails alone, saying why."""
    from aiosmtpd.controller import Controller

    from conftest import _Handler

    sink = SmtpSink(port=free_port())
    controller = Controller(
        _Handler(sink), hostname="127.0.0.1", port=sink.port, decode_data=False, enable_SMTPUTF8=smtputf8
    )
    controller.start()
    app = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db", relay(sink.port))
    try:
        await sources.ingest_sources(app, NOW)
        lst = await bootstrap.get_list(app, "demo")
        async with app.db.write() as s:
            for address in ("ann@example.com", "neko@例え.jp", "ñandú@example.com", "bob@example.com"):
                await readers.add_subscription(
                    s, lst, address, readers.ReaderPrefs(), confirmed=True, now=NOW
                )
        await compose.compose(app, lst, NOW, manual=True)
        stats = await delivery.deliver_due(app, lambda: NOW)
        got = await statuses(app)
        async with app.db.read() as s:
            replies = {d.address: d.smtp_reply for d in (await s.execute(select(Delivery))).scalars()}
    finally:
        await app.db.close()
        controller.stop()
    assert (
        got["neko@例え.jp"] == "sent" and b"To: neko@xn--r8jz45g.jp" in sink.to("neko@xn--r8jz45g.jp")[0].data
    )
    assert sink.to("ann@example.com") and sink.to("bob@example.com")
    if smtputf8:
        assert (stats.sent, stats.failed) == (4, 0)
        assert "ñandú@example.com".encode() in sink.to("ñandú@example.com")[0].data
    else:
        assert (stats.sent, stats.failed) == (3, 1)
        assert got["ñandú@example.com"] == "failed" and "SMTPUTF8" in (replies["ñandú@example.com"] or "")


async def test_a_reader_who_unsubscribes_after_the_claim_is_skipped_at_send_time(
    app: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    await compose_for(app, "ann", "bob")
    async with app.db.write() as s:
        claimed = await ledger_claim_all(s)
        bob = next(c for c in claimed if c.delivery.address == "bob@example.com")
        assert bob.subscription is not None
        await readers.unsubscribe(s, bob.subscription, "one-click", NOW)
        await release_all(s)
    stats = await delivery.deliver_due(app, lambda: NOW)
    assert stats.sent == 1
    assert (await statuses(app))["bob@example.com"] == "skipped"
    assert not smtp_sink.to("bob@example.com")


async def test_resume_lets_a_running_worker_deliver_a_paused_edition(
    app: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    import asyncio

    await compose_for(app, *(f"r{i}" for i in range(6)))
    async with app.db.read() as s:
        edition = (await s.execute(select(Edition))).scalar_one()
    await editions.pause_edition(app, edition.id, "operator")
    stop = asyncio.Event()
    running = asyncio.create_task(delivery.deliver_due(app, lambda: NOW, once=False, stop=stop))
    await asyncio.sleep(1.0)
    assert not smtp_sink.messages  # paused: nothing goes out
    await editions.resume_edition(app, edition.id, NOW)
    for _ in range(100):
        if len(smtp_sink.messages) == 6:
            break
        await asyncio.sleep(0.05)
    stop.set()
    stats = await running
    assert stats.sent == 6 and len(smtp_sink.messages) == 6


async def ledger_claim_all(s: object) -> list[object]:
    from digest.store import ledger

    ids = await ledger.claim_deliveries(s, "test-claimer", NOW, timedelta(minutes=5), 100)  # type: ignore[arg-type]
    return await ledger.load_claimed(s, ids)  # type: ignore[arg-type,return-value]


async def release_all(s: object) -> None:
    from digest.store import ledger

    await ledger.release_owner(s, "test-claimer", NOW)  # type: ignore[arg-type]
