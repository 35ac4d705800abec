"""Alerts: a relay rejecting every message with 5.7.1 pauses three editions, and the operator hears
once per window, by email (a real aiosmtpd server) and by webhook (a real HTTP server on loopback)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from conftest import SmtpSink, write_config
from digest import alerts, bootstrap, compose, delivery, readers, sources, store
from digest.config import load_config
from digest.store import migrate
from digest.store import sources as sources_store

OPS = "ops@example.com"


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, str]]]]:
    received: list[dict[str, str]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


LISTS = "".join(
    f'[[lists]]\nslug = "{slug}"\nname = "{slug.title()}"\nsources = ["seeds"]\nmax_age = "3650d"\n\n'
    for slug in ("alpha", "beta", "gamma")
)


async def test_an_alert_storm_sends_one_alert_per_window(
    tmp_path: Path, smtp_sink: SmtpSink, webhook: tuple[str, list[dict[str, str]]]
) -> None:
    url, hooks = webhook
    path = write_config(
        tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=smtp_sink.port, lists=LISTS,
        extra=f'\n[alerts]\nemail = "{OPS}"\nwebhook = "{url}"\nwindow = "1h"\n',
    )  # fmt: skip
    cfg = load_config(path)
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    app = await bootstrap.open_app(cfg)
    now = datetime.now(UTC)
    try:
        await sources.ingest_sources(app, now)
        for slug in ("alpha", "beta", "gamma"):
            lst = await bootstrap.get_list(app, slug)
            async with app.db.write() as s:
                for i in range(12):
                    await readers.add_subscription(
                        s, lst, f"{slug}{i}@example.net", readers.ReaderPrefs(), confirmed=True, now=now
                    )
            await compose.compose(app, lst, now, manual=True)
        smtp_sink.reply_for = lambda address, n: (
            None if address == OPS else "550 5.7.1 relaying denied by policy"
        )
        clock = [now]
        notifier = alerts.Notifier(app, clock=lambda: clock[0])
        async with alerts.watching(notifier):
            stats = await delivery.deliver_due(app, bootstrap.utcnow, once=True)
        assert len(stats.paused) == 3  # three editions, each tripped its breaker
        assert len(smtp_sink.to(OPS)) == 1 and len(hooks) == 1
        assert hooks[0]["kind"] == "edition_paused" and "5.7.1" in hooks[0]["title"]

        log = logging.getLogger("digest.delivery")
        async with alerts.watching(notifier):
            log.error("pausing edition 98: 10 readers in a row rejected with 550 5.7.1")  # same window
        assert len(hooks) == 1
        clock[0] = now + timedelta(hours=1, seconds=1)
        async with alerts.watching(notifier):
            log.error("pausing edition 99: 10 readers in a row rejected with 550 5.7.1")  # next window
        assert len(hooks) == 2 and len(smtp_sink.to(OPS)) == 2
        assert "edition 99" in hooks[1]["detail"]
    finally:
        await app.db.close()


async def test_checks_find_failing_sources_an_old_queue_and_policy_rejections(
    tmp_path: Path, smtp_sink: SmtpSink, webhook: tuple[str, list[dict[str, str]]]
) -> None:
    url, hooks = webhook
    path = write_config(
        tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=smtp_sink.port,
        extra=f'\n[alerts]\nwebhook = "{url}"\nsource_failing_after = "1h"\nqueue_age = "30m"\n',
    )  # fmt: skip
    cfg = load_config(path)
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    app = await bootstrap.open_app(cfg)
    now = datetime.now(UTC)
    try:
        await sources.ingest_sources(app, now - timedelta(hours=3))
        lst = await bootstrap.get_list(app, "demo")
        await compose.queue_test(app, lst, "ann@example.com", now - timedelta(hours=1))
        async with app.db.write() as s:
            source = await sources_store.source_by_name(s, "seeds")
            assert source is not None
            await sources_store.record_fetch(
                s, source.id, now - timedelta(minutes=5), error="feed answered 503"
            )
        notifier = alerts.Notifier(app, clock=lambda: now)
        sent = await alerts.check_and_notify(notifier, now)
        assert {a.kind for a in sent} == {"source_failing", "queue_age"}
        assert {h["kind"] for h in hooks} == {"source_failing", "queue_age"}
        assert await alerts.check_and_notify(notifier, now) == []  # the window holds them back
    finally:
        await app.db.close()


def test_log_records_map_to_alert_kinds() -> None:
    def record(msg: str, level: int = logging.ERROR, name: str = "digest.bounces") -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    assert (
        alerts.from_record(record("ALERT: complaint rate too high, edition paused: x")).kind
        == "complaint_rate"
    )  # type: ignore[union-attr]
    assert (
        alerts.from_record(record("daily complaint rate above 0.1%: x", logging.WARNING)).kind
        == "complaint_warning"
    )  # type: ignore[union-attr]
    assert (
        alerts.from_record(record("policy rejection reported for delivery 3", logging.WARNING)).kind
        == "relay_policy"
    )  # type: ignore[union-attr]
    assert alerts.from_record(record("pausing edition 4: x", name="digest.alerts")) is None
    assert alerts.from_record(record("source seeds: 3 new", logging.INFO)) is None
