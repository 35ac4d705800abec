"""The bounce inbox: an SMTP listener for bounces, complaints and mailto unsubscribes.

Part of `digest run` and `digest inbound`; each message goes through bounces.handle_message. The
listener runs on the app's own event loop (aiosmtpd's SMTP protocol under `loop.create_server`), so
database work needs no thread hand-off; it accepts RCPT only for bounces+…@ and unsub+…@ on the
bounce domain (550 5.1.1 otherwise) and answers 451 when the database fails, or when a DSN's
delivery is still `in_flight` after 10 s, so the sending MTA retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from digest import bootstrap
from digest.bounce_outcomes import ProcessReport, bounce_domain
from digest.bounces import handle_message
from digest.errors import UsageError

# The whole bounce pipeline logs under one name, the one operators filter and set levels by.
log = logging.getLogger("digest.bounces")

IN_FLIGHT_TRIES, IN_FLIGHT_WAIT = 40, 0.25  # wait up to 10 s for a worker to record "sent"
MAX_MESSAGE = 10 * 1024 * 1024  # the inbox refuses bigger messages (a DSN quotes at most one digest)
_OURS_LOCAL = re.compile(r"^(?:bounces|unsub)\+[^@\s]+$", re.IGNORECASE)


def parse_listen(value: str) -> tuple[str, int]:
    """`[bounce] listen` as (host, port): `127.0.0.1:2525`, `[::1]:2525` or `:2525` (all interfaces)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"[bounce] listen {value!r} is not host:port, e.g. 127.0.0.1:2525")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 (the operator asked for every interface)


class InboxHandler:
    """aiosmtpd handler: accepts only our bounce and unsubscribe addresses, processes each message."""

    def __init__(self, app: bootstrap.App, clock: Callable[[], datetime]) -> None:
        self.app = app
        self.clock = clock
        self.domain = bounce_domain(app.cfg).lower()
        self.report = ProcessReport()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        local, _, domain = address.strip().strip("<>").rpartition("@")
        if domain.lower() != self.domain or not _OURS_LOCAL.match(local):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or envelope.content or b""
        try:
            for rcpt in envelope.rcpt_tos:
                for _ in range(IN_FLIGHT_TRIES):
                    handled = await handle_message(
                        self.app, raw, rcpt, self.clock(), envelope_sender=envelope.mail_from or "<>"
                    )
                    if handled.outcome != "in_flight":
                        break
                    await asyncio.sleep(IN_FLIGHT_WAIT)
                self.report.add(handled)
                if handled.outcome == "in_flight":
                    return "451 4.3.0 Delivery outcome not recorded yet, please try again later"
        except Exception:  # the database is down: the sending MTA keeps the message and retries
            log.exception("inbound: could not record a message; asked the sender to retry")
            return "451 4.3.0 Temporary failure, please try again later"
        return "250 2.0.0 OK"


class Inbox:
    """The running bounce inbox; `await inbox.stop()` closes it."""

    def __init__(self, server: asyncio.Server, handler: InboxHandler, host: str, port: int):
        self.server = server
        self.handler = handler
        self.host = host
        self.port = port

    @property
    def report(self) -> ProcessReport:
        return self.handler.report

    async def stop(self) -> None:
        self.server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), timeout=5)


async def start_inbox(
    app: bootstrap.App, host: str, port: int, *, clock: Callable[[], datetime] = bootstrap.utcnow
) -> Inbox:
    """Listen for bounces, complaints and mailto unsubscribes on the running event loop."""
    from aiosmtpd.smtp import SMTP

    loop = asyncio.get_running_loop()
    handler = InboxHandler(app, clock)
    hostname = bounce_domain(app.cfg)

    def factory() -> SMTP:
        return SMTP(handler, hostname=hostname, decode_data=False, data_size_limit=MAX_MESSAGE, loop=loop)

    server = await loop.create_server(factory, host=host, port=port)
    bound = server.sockets[0].getsockname()[1] if server.sockets else port
    log.info("bounce inbox on %s:%d for bounces+…@%s and unsub+…@%s", host, bound, hostname, hostname)
    return Inbox(server, handler, host, int(bound))
