"""The app every operation runs in: config, database, templates and signing keys, opened once.

Opening an app refuses an outdated schema and syncs the configured sources and lists into the
database, so every process sees the same lists as its config file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from digest import rendering, store
from digest.config import Config, ListConfig
from digest.errors import UsageError
from digest.models import (
    MailingList,
)
from digest.store import migrate
from digest.store import sources as sources_store
from digest.store import topics as topics_store

log = logging.getLogger("digest")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    """What every operation needs: the config, the database, templates and signing keys."""

    cfg: Config
    db: store.Database
    templates: rendering.Templates
    keys: list[str]

    @property
    def base_url(self) -> str:
        return self.cfg.web.base_url


def resolve_path(cfg: Config, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (cfg.base_dir / p)


def templates_dir(cfg: Config) -> Path:
    return (
        resolve_path(cfg, cfg.templates.directory)
        if cfg.templates.directory
        else rendering.default_templates_dir()
    )


def open_database(cfg: Config) -> store.Database:
    return store.Database(store.resolve_url(cfg.database.url, cfg.base_dir))


async def open_app(cfg: Config, *, check: bool = True) -> App:
    """Connect, refuse an outdated schema, sync sources and lists from the config, load templates."""
    templates = rendering.Templates(templates_dir(cfg))
    database = open_database(cfg)
    try:
        if check:
            await migrate.check_schema(database)
        async with database.write() as s:
            await sync_config(s, cfg)
            keys = list(cfg.web.keys) or [await store.get_or_create_setting(s, "secret_key")]
    except BaseException:
        await database.close()
        raise
    return App(cfg=cfg, db=database, templates=templates, keys=keys)


async def sync_config(s: AsyncSession, cfg: Config) -> None:
    await sources_store.lock_config_sync(s)
    ids: dict[str, int] = {}
    for src in cfg.sources:
        location = src.location
        if src.kind == "directory" or (src.kind == "feed" and not src.url):
            location = str(resolve_path(cfg, location))
        row = await sources_store.upsert_source(s, src.name, src.kind, location, src.interval)
        ids[src.name] = row.id
    for lst in cfg.lists:
        lst_row = await sources_store.upsert_list(
            s, lst.slug, _list_values(lst), [ids[n] for n in lst.sources]
        )
        specs = [topics_store.TopicSpec(t.slug, t.name, t.description, t.rest) for t in lst.topics]
        removed = await topics_store.sync_topics(s, lst_row.id, specs, datetime.now(UTC))
        if removed:
            log.warning(
                "list %s: topic(s) %s no longer configured; dropped from readers' choices",
                lst.slug,
                ", ".join(removed),
            )
    await sources_store.deactivate_lists_except(s, [lst.slug for lst in cfg.lists])


def _list_values(lst: ListConfig) -> dict[str, object]:
    return {
        "name": lst.name,
        "description": lst.description,
        "schedule": lst.schedule,
        "timezone": lst.timezone,
        "min_articles": lst.min_articles,
        "max_articles": lst.max_articles,
        "max_age_seconds": int(lst.max_age.total_seconds()),
        "template": lst.template,
        "from_addr": lst.from_,
        "reply_to": lst.reply_to,
        "public": lst.public,
        "language": lst.language,
    }


async def get_list(app: App, slug: str) -> MailingList:
    async with app.db.read() as s:
        lst = await sources_store.list_by_slug(s, slug)
    if lst is None or not lst.active:
        known = ", ".join(x.slug for x in app.cfg.lists) or "none"
        raise UsageError(f"no list {slug!r} (configured lists: {known})")
    return lst
