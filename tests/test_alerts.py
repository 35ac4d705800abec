"""Alerts: a relay rejecting every message with 5.7.1 pauses three editions, and the operator hears
once per window, by email (a real aiosmtpd server) and by webhook (a real HTTP server on loopback).

Detectors raise their alerts explicitly: the tests silence the detectors' loggers, so an alert that
still depended on a log line's wording would not arrive."""

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
from digest import (
    alerting,
    alerts,
    bootstrap,
    bounce_outcomes,
    bounces,
    compose,
    delivery,
    readers,
    sources,
    store,
)
from digest.config import load_config
from digest.store import migrate
from digest.store import sources as sources_store
from digest.tokens import verp_address
from test_bounces import DOMAIN, FIXTURES, KEY, NOW, open_project, seed

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


def silence(monkeypatch: pytest.MonkeyPatch, logger: str) -> None:
    monkeypatch.setattr(logging.getLogger(logger), "disabled", True)


async def test_an_alert_storm_sends_one_alert_per_window(
    tmp_path: Path,
    smtp_sink: SmtpSink,
    webhook: tuple[str, list[dict[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
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
        silence(monkeypatch, "digest.delivery")  # the breaker's "pausing edition" line
        async with alerts.watching(notifier):
            stats = await delivery.deliver_due(app, bootstrap.utcnow, once=True)
        assert len(stats.paused) == 3  # three editions, each tripped its breaker
        assert len(smtp_sink.to(OPS)) == 1 and len(hooks) == 1
        assert hooks[0]["kind"] == "edition_paused" and "5.7.1" in hooks[0]["title"]

        def paused(edition: int) -> alerting.Alert:
            detail = f"pausing edition {edition}: 10 readers in a row rejected with 550 5.7.1"
            return alerting.Alert("edition_paused", f"pausing edition {edition}", detail, clock[0])

        async with alerts.watching(notifier):
            alerting.raise_alert(paused(98))  # same window
        assert len(hooks) == 1
        clock[0] = now + timedelta(hours=1, seconds=1)
        async with alerts.watching(notifier):
            alerting.raise_alert(paused(99))  # next window
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


async def test_bounce_detectors_raise_policy_and_complaint_alerts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await open_project(tmp_path, f"sqlite:///{tmp_path}/digest.db")
    raised: list[alerting.Alert] = []
    silence(monkeypatch, "digest.bounces")
    try:
        await seed(app, {1007: "reader@yahoo.com"})
        edition = await seed(
            app, {4000 + i: f"r{i}@example.com" for i in range(400)}, edition_status="sending"
        )
        arf = (FIXTURES / "arf-complaint-yahoo.eml").read_bytes()

        def complaint(delivery_id: int) -> bytes:
            verp = verp_address(delivery_id, KEY, DOMAIN).split("@")[0]
            return arf.replace(b"bounces+1011.556a6f6b42@", verp.encode() + b"@").replace(
                b"Message-ID: <", f"Message-ID: <c{delivery_id}.".encode()
            )

        with alerting.installed(raised.append):
            await bounces.handle_message(app, (FIXTURES / "yahoo-5.7.9-policy.eml").read_bytes(), None, NOW)
            await bounces.handle_message(app, complaint(4001), None, NOW)  # 1 in 400: a warning
            strict = bounce_outcomes.BouncePolicy(complaint_pause=0.002)
            await bounces.handle_message(app, complaint(4002), None, NOW, policy=strict)  # 2 in 400
        assert [a.kind for a in raised] == [
            "relay_policy",
            "complaint_warning",  # the edition's rate
            "complaint_warning",  # the sending day's rate
            "complaint_rate",
            "complaint_rate",
        ]
        assert "delivery 1007" in raised[0].detail
        assert raised[3].title == "complaint rate too high, edition paused"
        assert f"edition {edition}" in raised[3].detail and raised[3].at == NOW
        assert raised[4].title.startswith("daily complaint rate too high")
    finally:
        await app.db.close()
