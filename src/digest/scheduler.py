"""APScheduler wiring only: which job runs how often. Due times come from digest.schedule.

On PostgreSQL each job runs under `pg_try_advisory_lock`, so several scheduler processes do
each job once; a process that does not get the lock skips that run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from digest import alerts, bootstrap, bounces, compose, retention, signup, sources, store

log = logging.getLogger("digest.scheduler")


async def run_exclusive(app: bootstrap.App, name: str, job: Callable[[], Awaitable[object]]) -> bool:
    """Run `job` unless another scheduler process is running the same job right now."""
    async with store.exclusive(app.db, f"digest-job:{name}") as got:
        if got:
            await job()
        return got


def build_scheduler(app: bootstrap.App) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone=UTC)
    now = datetime.now(UTC)

    def every(
        name: str, job: Callable[[], Awaitable[object]], interval: timedelta, first: datetime | None = None
    ) -> None:
        """Run `job` every `interval` (first at `first`, else one interval from now), once at a time
        across scheduler processes, logging rather than raising its failures."""

        async def run() -> None:
            try:
                await run_exclusive(app, name, job)
            except Exception:
                log.exception("scheduled job %s failed", name)

        options = {"next_run_time": first} if first is not None else {}
        scheduler.add_job(
            run,
            "interval",
            seconds=interval.total_seconds(),
            id=name,
            name=name,  # APScheduler's log lines name the job by this, not by the inner function
            max_instances=1,
            coalesce=True,
            **options,
        )

    for src in app.cfg.sources:
        if src.kind == "api":
            continue

        async def ingest_one(name: str = src.name) -> None:
            for report in await sources.ingest_sources(app, datetime.now(UTC), only=name, due_only=True):
                if report.error:
                    log.warning("ingest failed: %s", report.error)
                elif report.new or report.updated or report.linked or report.refused:
                    log.info(
                        "source %s: %d new, %d updated, %d linked, %d refused",
                        report.source,
                        report.new,
                        report.updated,
                        report.linked,
                        len(report.refused),
                    )

        every(f"ingest:{src.name}", ingest_one, src.interval, first=now)

    async def compose_for_due_readers() -> None:
        for report in await compose.compose_due(app, datetime.now(UTC)):
            if report.deliveries or report.skipped:
                log.info(
                    "list %s: %d composed, %d skipped", report.list_slug, report.deliveries, report.skipped
                )

    async def housekeeping() -> None:
        moment = datetime.now(UTC)
        await signup.purge_stale_signups(app, moment)
        await bounces.trim_raw_bounces(app, moment)

    async def prune() -> None:
        await retention.prune(app, datetime.now(UTC))

    every("housekeeping", housekeeping, timedelta(hours=1))
    every("prune", prune, timedelta(days=1), first=now + timedelta(minutes=5))
    notifier = alerts.Notifier(app)
    if notifier.enabled:

        async def check_alerts() -> None:
            await alerts.check_and_notify(notifier, datetime.now(UTC))

        every("alerts", check_alerts, timedelta(minutes=1), first=now + timedelta(seconds=30))
    every("compose", compose_for_due_readers, app.cfg.scheduler.tick, first=now)
    return scheduler
