"""Work a request hands off: run by the app's own task, off every connection's path.

Starlette's BackgroundTasks run on the connection that answered: the next request on that
keep-alive connection waits for them, so how long it waits tells whether an address was new.
Here the request only queues a coroutine; one task per app runs the queue, logs a failure with
what was being done (never shown to the reader, never lost silently), and is drained when the
app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("digest")

Job = tuple[str, Callable[[], Awaitable[Any]]]


class WorkQueue:
    """A FIFO of (what, coroutine function), run one at a time by a task started on first use."""

    def __init__(self, wake: asyncio.Event | None = None) -> None:
        self._jobs: asyncio.Queue[Job] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self.wake = wake  # set after each job, so the delivery loop sends what it queued at once
        self.failed = 0

    def submit(self, what: str, job: Callable[[], Awaitable[Any]]) -> None:
        """Queue `job`; it runs after the current request has answered."""
        self._jobs.put_nowait((what, job))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="digest-web-work")

    async def _run(self) -> None:
        while True:
            what, job = await self._jobs.get()
            try:
                await job()
            except Exception:
                self.failed += 1
                log.exception("%s failed", what)
            finally:
                self._jobs.task_done()
            if self.wake is not None:
                self.wake.set()

    async def join(self) -> None:
        """Wait until every queued job has run."""
        await self._jobs.join()

    async def close(self, timeout: float = 30.0) -> None:
        """Drain the queue (at most `timeout` seconds), then stop the task."""
        if self._runner is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._jobs.join(), timeout)
        if not self._jobs.empty():
            log.warning("web shutdown: %d queued job(s) dropped after %.0f s", self._jobs.qsize(), timeout)
        self._runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner
        self._runner = None
