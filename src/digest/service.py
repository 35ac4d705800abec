"""Long-running processes: the web server, the scheduler and the delivery worker, alone or together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import uvicorn

from digest import alerts, bootstrap, bounce_listener, bounces, capture, delivery
from digest.scheduler import build_scheduler

log = logging.getLogger("digest")


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
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    cfg = app.cfg
    controller: Any = None
    if (worker or web) and cfg.capture.enabled and not cfg.relays:
        directory = bootstrap.resolve_path(cfg, cfg.capture.directory)
        if capture.is_listening(cfg.capture.host, cfg.capture.port):
            log.info("a capture server already listens on %s:%d", cfg.capture.host, cfg.capture.port)
        else:
            controller = capture.start_capture(cfg.capture.host, cfg.capture.port, directory)
            log.info(
                "capture SMTP server on %s:%d stores mail in %s",
                cfg.capture.host,
                cfg.capture.port,
                directory,
            )

    wake = asyncio.Event()  # set by the web app when it queues mail
    tasks: list[asyncio.Task[Any]] = []
    bounce_inbox = None
    if inbox is None:
        inbox = web and scheduler and worker
    if inbox and cfg.bounce.listen:
        host, port = bounce_listener.parse_listen(cfg.bounce.listen)
        bounce_inbox = await bounce_listener.start_inbox(app, host, port)
        tasks.append(asyncio.create_task(_trim_raw_bounces_daily(app, stop)))
    elif inbox:
        log.info("no bounce inbox: set [bounce] listen (host:port) to receive bounces over SMTP")
    sched = None
    if scheduler:
        sched = build_scheduler(app)
        sched.start()
    if worker or web:
        # `digest web` alone still delivers confirmation mail; the full worker sends everything.
        tasks.append(
            asyncio.create_task(delivery.deliver_due(app, bootstrap.utcnow, once=False, stop=stop, wake=wake))
        )
    server = None
    if web:
        from digest.web import create_app, limits

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
        tasks.append(asyncio.create_task(server.serve()))
        log.info("web on http://%s:%d (public URL %s)", cfg.web.host, cfg.web.port, cfg.web.base_url)

    async with alerts.watching(alerts.Notifier(app)):
        await stop.wait()
        log.info("stopping")
    if server is not None:
        server.should_exit = True
    if sched is not None:
        sched.shutdown(wait=False)
    await asyncio.gather(*tasks, return_exceptions=True)
    if bounce_inbox is not None:
        await bounce_inbox.stop()
    if controller is not None:
        controller.stop()


async def _trim_raw_bounces_daily(app: bootstrap.App, stop: asyncio.Event) -> None:
    """Raw bounce messages are kept 30 days: trim once at start, then once a day."""
    while not stop.is_set():
        try:
            await bounces.trim_raw_bounces(app, bootstrap.utcnow())
        except Exception:  # housekeeping must never stop the inbox
            log.exception("trimming raw bounce messages failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=86400)
