"""Ingest: fetch every configured source and store what is new, one broken source never stopping the rest."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from digest import ingest, topics
from digest.bootstrap import App
from digest.errors import SourceError, UsageError
from digest.store import sources as sources_store


@dataclass(frozen=True)
class IngestReport:
    """What one fetch of one source did with every item it held: nothing disappears unsaid."""

    source: str
    new: int = 0
    updated: int = 0
    known: int = 0
    linked: int = 0  # exact copies of stories stored from another source
    refused: tuple[str, ...] = ()  # one line per item not taken, saying why
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
    limits = _limits(app, name)
    try:
        result = await ingest.fetch_source(
            name, kind, location, now=now, etag=etag, last_modified=last_modified, limits=limits
        )
    except SourceError as exc:
        async with app.db.write() as s:
            await sources_store.record_fetch(s, source_id, now, error=str(exc))
        return IngestReport(name, error=str(exc))
    async with app.db.write() as s:
        stored = (
            await sources_store.store_articles(s, source_id, result.articles, now)
            if result.articles
            else sources_store.Stored()
        )
        await topics.match_articles(app, s, stored.article_ids)
        await sources_store.record_fetch(
            s,
            source_id,
            now,
            error=None,
            etag=result.etag,
            last_modified=result.last_modified,
            keep_validators=result.not_modified,
        )
        if result.title:
            await sources_store.set_feed_title(s, name, result.title)
    return IngestReport(
        name,
        new=stored.new,
        updated=stored.updated,
        known=stored.known,
        linked=stored.linked,
        refused=tuple(result.refused),
        not_modified=result.not_modified,
        warnings=tuple(result.warnings),
    )


async def check_source(app: App, name: str, now: datetime) -> tuple[ingest.FetchResult, sources_store.Stored]:
    """Fetch one source and say what ingesting it would do, item by item; stores nothing."""
    async with app.db.read() as s:
        src = await sources_store.source_by_name(s, name)
    configured = next((c for c in app.cfg.sources if c.name == name), None)
    if src is None or configured is None:
        raise UsageError(
            f"no source {name!r} (configured: {', '.join(c.name for c in app.cfg.sources) or 'none'})"
        )
    if src.kind == "api":
        raise UsageError(f"source {name!r} is of kind api: articles are posted to it, not fetched")
    result = await ingest.fetch_source(name, src.kind, src.location, now=now, limits=_limits(app, name))
    async with app.db.read() as s:
        would = await sources_store.store_articles(s, src.id, result.articles, now, dry_run=True)
    return result, would


def _limits(app: App, name: str) -> ingest.FetchLimits:
    configured = next((src for src in app.cfg.sources if src.name == name), None)
    if configured is None:
        return ingest.FetchLimits()
    return ingest.FetchLimits(timeout=configured.timeout.total_seconds(), max_bytes=configured.max_bytes)
