"""Long-running processes: the web server, the scheduler, the delivery worker and the bounce inbox,
alone or together, each part supervised.

A part that fails is logged with its traceback and started again after a back-off (1 s, doubling
to at most a minute while it keeps failing); a configuration or usage error (a busy port, a bad
key) stops the whole process with one line and exit 1, for the service manager to report. SIGTERM
or SIGINT stops every part cleanly: the worker finishes what is in flight (at most
`[delivery] stop_timeout`), records every outcome and hands back what it had claimed; exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from digest import alerts, bootstrap, bounce_listener, bounces, capture, delivery
from digest.errors import DigestError, PortInUse
from digest.models import DeliveryKind

log = logging.getLogger("digest")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stopped_while_starting = threading.Event()
RESTART_MAX = 60.0  # seconds between restarts of a part that keeps failing
HEALTHY_AFTER = 60.0  # a part that ran this long before failing starts again at once


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[asyncio.Event], Awaitable[None]]  # returns when the event is set


def catch_stop_while_starting() -> None:
    """Called first thing by a long-running command: a SIGTERM that arrives while the process is
    still importing and connecting is remembered, and `run_all` then stops at once, exit 0,
    instead of the process dying of the signal."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda _signum, _frame: _stopped_while_starting.set())


async def run_all(
    app: bootstrap.App, *, web: bool, scheduler: bool, worker: bool, inbox: bool | None = None
) -> None:
    """Run the chosen parts until SIGINT or SIGTERM, then stop cleanly.

    While they run, the alerts raised in this process (an edition paused, a complaint rate too
    high) are sent to `[alerts]`; the scheduler also checks sources and the queue.

    The bounce inbox runs when `[bounce] listen` is set: by default only in the all-in-one process
    (`digest run`), so `digest web` and `digest worker` beside `digest inbound` never compete for
    its port; `inbox=True` (`digest inbound`) asks for it explicitly.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if _stopped_while_starting.is_set():
        stop.set()
    cfg = app.cfg
    if inbox is None:
        inbox = web and scheduler and worker
    if web:
        ensure_free(cfg.web.host, cfg.web.port, "[web] port", "DIGEST_WEB__PORT")
    if inbox and cfg.bounce.listen:
        host, port = bounce_listener.parse_listen(cfg.bounce.listen)
        ensure_free(host, port, "[bounce] listen", "DIGEST_BOUNCE__LISTEN")
    elif inbox:
        log.info("no bounce inbox: set [bounce] listen (host:port) to receive bounces over SMTP")
    controller = _start_capture(app) if (worker or web) else None
    wake = asyncio.Event()  # set by the web app when it queues mail
    parts = _parts(app, web=web, scheduler=scheduler, worker=worker, inbox=inbox, wake=wake)
    log.info("running: %s", ", ".join(part.name for part in parts))
    try:
        async with alerts.watching(alerts.Notifier(app)), asyncio.TaskGroup() as tg:
            for part in parts:
                tg.create_task(supervise(part, stop), name=part.name)
            await stop.wait()
            log.info("stopping")
    except BaseExceptionGroup as group:
        # Only a part's configuration or usage error gets this far: say it as one line.
        raise _first_leaf(group) from None
    finally:
        if controller is not None:
            controller.stop()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _parts(
    app: bootstrap.App, *, web: bool, scheduler: bool, worker: bool, inbox: bool, wake: asyncio.Event
) -> list[Part]:
    cfg = app.cfg
    parts: list[Part] = []
    if worker or web:
        # `digest web` alone delivers transactional mail (confirmations) unless told otherwise, so
        # that it never doubles the per-process sending limits of the real workers beside it.
        kinds: Sequence[str] | None = None
        if not worker and cfg.web.deliver == "transactional":
            kinds = [DeliveryKind.TRANSACTIONAL]

        async def deliver(stop: asyncio.Event) -> None:
            await delivery.deliver_due(app, bootstrap.utcnow, once=False, stop=stop, wake=wake, kinds=kinds)

        parts.append(Part("delivery worker", deliver))
    if web:
        parts.append(Part("web server", lambda stop: _serve_web(app, stop, wake)))
    if scheduler:
        parts.append(Part("scheduler", lambda stop: _run_scheduler(app, stop)))
    if inbox and cfg.bounce.listen:
        parts.append(Part("bounce inbox", lambda stop: _run_inbox(app, stop)))
        parts.append(Part("raw bounce trimming", lambda stop: _trim_raw_bounces_daily(app, stop)))
    return parts


async def supervise(part: Part, stop: asyncio.Event) -> None:
    """Keep one part running until `stop`: restart it when it fails or ends by itself."""
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            await part.run(stop)
        except DigestError:
            raise  # configuration or usage: starting again cannot help
        except Exception:
            log.exception("%s failed", part.name)
        else:
            if stop.is_set():
                return
            log.error("%s ended by itself", part.name)
        failures = 1 if time.monotonic() - started >= HEALTHY_AFTER else failures + 1
        delay = min(2.0 ** (failures - 1), RESTART_MAX)
        log.warning("restarting %s in %.0f s (failure %d in a row)", part.name, delay, failures)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


def ensure_free(host: str, port: int, key: str, variable: str) -> None:
    """Refuse to start on a port something else holds, naming the setting that moves it."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortInUse(
                f"port {port} on {host} is already in use ({exc.strerror}): "
                f"set {key} in the config or {variable} to use another"
            ) from None


def _start_capture(app: bootstrap.App) -> Any:
    """The embedded capture SMTP server, when no relay is configured."""
    cfg = app.cfg
    if not cfg.capture.enabled or cfg.relays:
        return None
    directory = bootstrap.resolve_path(cfg, cfg.capture.directory)
    host, port = cfg.capture.host, cfg.capture.port
    controller = capture.ensure_capture(host, port, directory)
    if controller is None:
        log.info("this project's capture server already listens on %s:%d", host, port)
    else:
        log.info("capture SMTP server on %s:%d stores mail in %s", host, port, directory)
    return controller


async def _serve_web(app: bootstrap.App, stop: asyncio.Event, wake: asyncio.Event) -> None:
    import uvicorn

    from digest.web import create_app, limits

    cfg = app.cfg
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(
                app,
                rate_limits=limits.RateLimits(cfg.web.signup_per_minute, cfg.web.signup_per_hour),
                confirmations_per_hour=cfg.web.confirmations_per_hour,
                wake=wake,
            ),
            host=cfg.web.host,
            port=cfg.web.port,
            log_level="warning",
            proxy_headers=False,
            lifespan="on",
        )
    )
    serving = asyncio.ensure_future(server.serve())
    stopping = asyncio.ensure_future(stop.wait())
    log.info("web on http://%s:%d (public URL %s)", cfg.web.host, cfg.web.port, cfg.web.base_url)
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        stopping.cancel()
        try:
            await serving
        except SystemExit:
            # uvicorn exits the process when it cannot bind; the port was taken after our check.
            raise PortInUse(
                f"the web server could not listen on {cfg.web.host}:{cfg.web.port}: "
                "set [web] port in the config or DIGEST_WEB__PORT to use another"
            ) from None


async def _run_scheduler(app: bootstrap.App, stop: asyncio.Event) -> None:
    from digest.scheduler import build_scheduler

    sched = build_scheduler(app)
    sched.start()
    try:
        await stop.wait()
    finally:
        sched.shutdown(wait=False)


async def _run_inbox(app: bootstrap.App, stop: asyncio.Event) -> None:
    host, port = bounce_listener.parse_listen(app.cfg.bounce.listen or "")
    inbox = await bounce_listener.start_inbox(app, host, port)
    try:
        await stop.wait()
    finally:
        await inbox.stop()


async def _trim_raw_bounces_daily(app: bootstrap.App, stop: asyncio.Event) -> None:
    """Raw bounce messages are kept 30 days: trim once at start, then once a day."""
    while not stop.is_set():
        await bounces.trim_raw_bounces(app, bootstrap.utcnow())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=86400)
