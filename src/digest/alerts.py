"""Alerts: tell the operator about trouble before readers notice, by email and/or a webhook.

Two sources of alerts:
- Detectors raise them where they find the trouble (`alerting.raise_alert`): the circuit breaker
  pausing an edition (a relay answering 5.7.x to everyone), complaint rates at the warning or pause
  threshold, and policy rejections reported by the bounce inbox. `watching` sends the alerts raised
  in this process while it runs.
- `check`, run every minute by the scheduler, looks at the database for a source failing longer
  than `[alerts] source_failing_after`, a due delivery waiting longer than `[alerts] queue_age`,
  and 5.7.x replies from a relay.

Rate limit: at most one alert of a kind per `[alerts] window`, claimed in the database (the
`settings` table), so a storm of a thousand failures across several processes sends one alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import httpx

from digest import alerting, bootstrap, messages
from digest.alerting import Alert
from digest.smtp import SmtpConnection
from digest.store import reports as reports_store
from digest.store import retention as retention_store
from digest.store import sources as sources_store

log = logging.getLogger("digest.alerts")


class Notifier:
    """Sends alerts by email and webhook, at most one per kind and window (claimed in the database)."""

    def __init__(
        self,
        app: bootstrap.App,
        *,
        clock: Callable[[], datetime] = bootstrap.utcnow,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.app, self.cfg, self.clock, self.transport = app, app.cfg.alerts, clock, transport
        self.sent: list[Alert] = []

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.email or self.cfg.webhook)

    async def notify(self, alert: Alert, *, limit: bool = True) -> bool:
        """Send the alert unless one of its kind went out within the window; True when sent."""
        if not self.enabled:
            return False
        if limit:
            async with self.app.db.write() as s:
                if not await reports_store.claim_alert_slot(s, alert.key, self.clock(), self.cfg.window):
                    log.debug("alert %s held back: one went out within %s", alert.kind, self.cfg.window)
                    return False
        delivered = False
        if self.cfg.webhook:
            delivered |= await self._webhook(alert)
        if self.cfg.email:
            delivered |= await self._email(alert)
        self.sent.append(alert)
        return delivered

    def payload(self, alert: Alert) -> dict[str, str]:
        body = asdict(alert)
        body["at"] = alert.at.isoformat()
        body["service"] = "digest"
        body["base_url"] = self.app.base_url
        return body

    async def _webhook(self, alert: Alert) -> bool:
        assert self.cfg.webhook is not None
        try:
            async with httpx.AsyncClient(transport=self.transport, timeout=10) as client:
                response = await client.post(self.cfg.webhook, json=self.payload(alert))
                response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("alert webhook %s failed: %s", self.cfg.webhook, exc)
            return False
        return True

    async def _email(self, alert: Alert) -> bool:
        assert self.cfg.email is not None
        cfg = self.app.cfg
        msg = EmailMessage()
        msg["From"] = cfg.sender.from_
        msg["To"] = self.cfg.email
        msg["Subject"] = f"[digest] {alert.title}"[:200]
        msg["Date"] = formatdate(alert.at.timestamp())
        msg["Message-ID"] = make_msgid(domain=cfg.sender.domain)
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(
            f"{alert.detail}\n\nkind: {alert.kind}\nat: {alert.at:%Y-%m-%d %H:%M:%S} UTC\n"
            f"service: {self.app.base_url}\n\nAt most one alert of this kind is sent every {self.cfg.window}."
        )
        relay = cfg.mail_relays[0]
        conn = SmtpConnection(relay)
        try:
            outcome = await conn.send(messages.address_of(cfg.sender.from_), self.cfg.email, msg.as_bytes())
        finally:
            await conn.close()
        if outcome.verdict != "sent":
            log.warning("alert email to %s not sent: %s", self.cfg.email, outcome.reply)
        return outcome.verdict == "sent"


@contextlib.asynccontextmanager
async def watching(notifier: Notifier) -> AsyncIterator[asyncio.Queue[Alert]]:
    """While inside, the alerts raised in this process are sent by `notifier`."""
    if not notifier.enabled:
        yield asyncio.Queue()
        return
    queue: asyncio.Queue[Alert] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def sink(alert: Alert) -> None:
        # Thread-safe hand-off: whoever raises never waits for the sending.
        loop.call_soon_threadsafe(queue.put_nowait, alert)

    async def send_all() -> None:
        while True:
            alert = await queue.get()
            try:
                await notifier.notify(alert)
            except Exception:
                log.exception("sending an alert failed")
            finally:
                queue.task_done()

    task = asyncio.create_task(send_all())
    try:
        with alerting.installed(sink):
            yield queue
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.join(), timeout=15)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def check(app: bootstrap.App, now: datetime) -> list[Alert]:
    """Conditions found in the database: failing sources, an old queue, policy rejections."""
    cfg = app.cfg.alerts
    found: list[Alert] = []
    async with app.db.read() as s:
        sources = [
            src for src in await sources_store.all_sources(s) if src.name in {c.name for c in app.cfg.sources}
        ]
        _, oldest = await reports_store.queue_summary(s, now)
        rejections = await retention_store.policy_rejections_since(s, now - cfg.window)
    for src in sources:
        if src.last_error is None:
            continue
        since = src.last_success_at
        if since is None or now - since >= cfg.source_failing_after:
            when = f"since {since:%Y-%m-%d %H:%M} UTC" if since else "and never fetched successfully"
            found.append(
                Alert(
                    "source_failing",
                    f"source {src.name} is failing",
                    f"source {src.name} has failed {when}: {src.last_error}",
                    now,
                    subject=src.name,
                )
            )
    if oldest is not None and now - oldest >= cfg.queue_age:
        found.append(
            Alert(
                "queue_age",
                "mail is waiting in the queue",
                f"the oldest due delivery has waited {now - oldest} (threshold {cfg.queue_age}): "
                "is a `digest worker` running, and can it reach the relay?",
                now,
            )
        )
    if rejections:
        lines = "\n".join(f"{n} x {relay}: {reply[:200]}" for relay, reply, n in rejections[:10])
        found.append(Alert("relay_policy", "a relay answers 5.7.x", f"policy rejections:\n{lines}", now))
    return found


async def check_and_notify(notifier: Notifier, now: datetime) -> list[Alert]:
    sent = []
    for alert in await check(notifier.app, now):
        if await notifier.notify(alert):
            sent.append(alert)
    return sent


def describe(alert: Alert) -> str:
    return json.dumps(asdict(alert), default=str)
