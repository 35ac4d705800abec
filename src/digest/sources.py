"""Ingest: fetch every configured source and store what is new, one broken source never stopping the rest."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from digest import ingest
from digest.bootstrap import App
from digest.errors import SourceError, UsageError
from digest.store import sources as sources_store

log = logging.getLogger("digest")


@dataclass(frozen=True)
class IngestReport:
    source: str
    new: int
    seen: int
    not_modified: bool = False
    error: str | None = None
    warnings: tuple[str, ...] = ()


async def ingest_sources(
    app: App, now: datetime, only: str | None = None, *, due_only: bool = False
) -> list[IngestReport]:
    """Fetch every feed and directory source (or one); a broken source is reported, the rest go on.

    `due_only` (the scheduler's jobs): skip a source fetched less than its interval ago, by this or
    another scheduler process, so several schedulers fetch each feed once per interval.
    """
    async with app.db.read() as s:
        sources = [
            src for src in await sources_store.all_sources(s) if src.name in {c.name for c in app.cfg.sources}
        ]
    if only is not None:
        sources = [src for src in sources if src.name == only]
        if not sources:
            raise UsageError(f"no source {only!r} (configured: {', '.join(c.name for c in app.cfg.sources)})")
    if due_only:
        # 10% slack: APScheduler's own interval must not be skipped for a few milliseconds of drift.
        sources = [
            src
            for src in sources
            if src.last_fetched_at is None
            or now - src.last_fetched_at >= timedelta(seconds=src.interval_seconds * 0.9)
        ]
    reports = []
    for src in sources:
        if src.kind == "api":
            continue
        reports.append(
            await ingest_one(app, src.id, src.name, src.kind, src.location, src.etag, src.last_modified, now)
        )
    return reports


async def ingest_one(
    app: App,
    source_id: int,
    name: str,
    kind: str,
    location: str,
    etag: str | None,
    last_modified: str | None,
    now: datetime,
) -> IngestReport:
    try:
        result = await ingest.fetch_source(
            name, kind, location, now=now, etag=etag, last_modified=last_modified
        )
    except SourceError as exc:
        async with app.db.write() as s:
            await sources_store.record_fetch(s, source_id, now, error=str(exc))
        log.warning("ingest failed: %s", exc)
        return IngestReport(name, 0, 0, error=str(exc))
    items = result.articles
    async with app.db.write() as s:
        new = await sources_store.store_articles(s, source_id, items, now) if items else 0
        await sources_store.record_fetch(
            s,
            source_id,
            now,
            error=None,
            etag=result.etag,
            last_modified=result.last_modified,
            keep_validators=result.not_modified,
        )
    return IngestReport(name, new, len(items) - new, result.not_modified, None, tuple(result.warnings))
