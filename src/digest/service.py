"""Long-running processes: the web server, the scheduler and the delivery worker, alone or together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import uvicorn

from digest import capture, pipeline
from digest.scheduler import build_scheduler

log = logging.getLogger("digest")


async def run_all(app: pipeline.App, *, web: bool, scheduler: bool, worker: bool) -> None:
    """Run the chosen parts until SIGINT or SIGTERM, then stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    cfg = app.cfg
    controller: Any = None
    if (worker or web) and cfg.capture.enabled and not cfg.relays:
        directory = pipeline.resolve_path(cfg, cfg.capture.directory)
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

    tasks: list[asyncio.Task[Any]] = []
    sched = None
    if scheduler:
        sched = build_scheduler(app)
        sched.start()
    if worker or web:
        # `digest web` alone still delivers confirmation mail; the full worker sends everything.
        tasks.append(asyncio.create_task(pipeline.deliver(app, pipeline.utcnow, once=False, stop=stop)))
    server = None
    if web:
        from digest.web import create_app

        server = uvicorn.Server(
            uvicorn.Config(
                create_app(app),
                host=cfg.web.host,
                port=cfg.web.port,
                log_level="warning",
                proxy_headers=False,
                lifespan="on",
            )
        )
        tasks.append(asyncio.create_task(server.serve()))
        log.info("web on http://%s:%d (public URL %s)", cfg.web.host, cfg.web.port, cfg.web.base_url)

    await stop.wait()
    log.info("stopping")
    if server is not None:
        server.should_exit = True
    if sched is not None:
        sched.shutdown(wait=False)
    await asyncio.gather(*tasks, return_exceptions=True)
    if controller is not None:
        controller.stop()
