"""The operator API under /api: subscribers and pushed articles, behind `Authorization: Bearer`.

The token is `[api] token`; without one the API is off. Errors are JSON, as errors.py writes them.
No CSRF token is needed: a cross-site form cannot send `application/json` or an Authorization header.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from digest import (
    bootstrap,
    extract,
    readers,
    readers_io,
    retention,
    signup,
    signup_form,
    source_items,
    topics,
)
from digest.errors import DigestError, UsageError
from digest.models import NewArticle
from digest.store import readers as readers_store
from digest.store import sources as sources_store
from digest.web import auth
from digest.web.deps import DigestApp, Now, Web, client_ip, user_agent
from digest.web.errors import ApiError


class SubscriberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=320)
    name: str = Field(default="", max_length=1000)
    lists: list[str] = Field(min_length=1, max_length=signup_form.MAX_LISTS)
    cadence: Literal["default", "daily", "weekly"] = "default"
    weekday: int | None = Field(default=None, ge=0, le=6)
    send_hour: int | None = Field(default=None, ge=0, le=23)
    timezone: str | None = Field(default=None, max_length=64)
    confirmed: bool = Field(default=False, description="You hold consent: skip double opt-in.")


class ArticleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(default="", max_length=2000)
    url: str | None = Field(default=None, max_length=4000)
    guid: str | None = Field(default=None, max_length=1000)
    content_html: str = Field(default="", max_length=500_000)
    summary: str | None = Field(default=None, max_length=5000)
    author: str | None = Field(default=None, max_length=500)
    published_at: datetime | None = None
    image_url: str | None = Field(default=None, max_length=4000)
    categories: list[str] = Field(default_factory=list, max_length=30)


class ArticleBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    articles: list[ArticleIn] = Field(min_length=1, max_length=200)


def operator(request: Request, app: DigestApp) -> None:
    expected = app.cfg.api.token
    if not expected:
        raise ApiError(403, "api_disabled", "The operator API is off: set [api] token in the config.")
    if not auth.bearer_ok(request, expected):
        raise ApiError(401, "unauthorized", "Send Authorization: Bearer <the [api] token>.")


router = APIRouter(tags=["operator"], dependencies=[Depends(operator)])


async def list_or_404(app: bootstrap.App, slug: str | None) -> int | None:
    if slug is None:
        return None
    async with app.db.read() as s:
        lst = await sources_store.list_by_slug(s, slug)
    if lst is None:
        raise ApiError(404, "not_found", f"no list {slug!r}")
    return lst.id


@router.get("/api/subscribers")
async def api_subscribers(
    app: DigestApp,
    list_slug: str | None = Query(default=None, alias="list"),
    status: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> dict[str, Any]:
    """Subscriptions with their consent record, one row per reader and list."""
    limit, offset = max(0, min(limit, 10_000)), max(0, offset)
    rows, total = await readers_io.export_page(
        app, await list_or_404(app, list_slug), status or None, limit, offset
    )
    return {"subscribers": rows, "total": total}


@router.get("/api/subscribers/export")
async def api_export(app: DigestApp, list_slug: str | None = Query(default=None, alias="list")) -> Response:
    """Every subscription as CSV (the columns of `digest subscribers export`)."""
    list_id = await list_or_404(app, list_slug)

    async def csv_lines() -> AsyncIterator[str]:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=readers_io.EXPORT_COLUMNS)
        writer.writeheader()
        async for row in readers_io.stream_export_rows(app, list_id):
            writer.writerow({k: _csv_safe(v) for k, v in row.items()})
            if out.tell() >= 65536:
                yield out.getvalue()
                out.seek(0)
                out.truncate()
        yield out.getvalue()

    return StreamingResponse(
        csv_lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'},
    )


@router.get("/api/subscribers/{address}")
async def api_subscriber(address: str, app: DigestApp) -> dict[str, Any]:
    """One reader: subscriptions and recent events."""
    _, key = _address_key(address)
    async with app.db.read() as s:
        reader = await readers_store.subscriber_by_email(s, key)
        if reader is None:
            raise ApiError(404, "not_found", "no such subscriber")
        subs = await readers_store.subscriptions_of(s, reader.id)
        events = await readers_store.events_of(s, reader.id)
    return {
        "email": reader.email,
        "name": reader.name,
        "status": reader.status,
        "subscriptions": [
            {
                "list": lst.slug,
                "status": sub.status,
                "cadence": sub.cadence,
                "signup_at": sub.signup_at,
                "confirmed_at": sub.confirmed_at,
                "unsubscribed_at": sub.unsubscribed_at,
                "unsubscribe_method": sub.unsubscribe_method,
            }
            for sub, lst in subs
        ],
        "events": [{"at": e.created_at, "kind": e.kind, "detail": e.detail} for e in events],
    }


@router.post("/api/subscribers", status_code=201)
async def api_add(body: SubscriberIn, request: Request, web: Web, now: Now) -> dict[str, Any]:
    """Add a reader: confirmed at once if you hold consent, else pending with a confirmation email."""
    app = web.app
    async with app.db.read() as s:
        known = [lst.slug for lst in await sources_store.active_lists(s)]
    fields: dict[str, object] = body.model_dump()
    fields["list"], fields["consent"] = fields.pop("lists"), True
    consent = readers.Consent(ip=client_ip(request), user_agent=user_agent(request), source="api")
    try:
        item = signup_form.parse_signup(fields, known, consent)
    except signup_form.SignupInvalid as exc:
        raise ApiError(422, "invalid", "Some fields need fixing.", fields=exc.fields) from None
    if body.confirmed:
        async with app.db.write() as s:
            for slug in item.lists:
                lst = await sources_store.list_by_slug(s, slug)
                assert lst is not None
                await readers.add_subscription(
                    s, lst, item.address, item.prefs, confirmed=True, now=now, consent=consent, method="api"
                )
    else:
        await signup.request_confirmation(app, item, now, method="api", hourly_budget=None)
        if web.wake is not None:
            web.wake.set()
    async with app.db.read() as s:
        reader = await readers_store.subscriber_by_email(s, item.address.casefold())
        subs = await readers_store.subscriptions_of(s, reader.id) if reader else []
    return {
        "email": item.address,
        "subscriptions": [{"list": lst.slug, "status": sub.status} for sub, lst in subs],
    }


@router.delete("/api/subscribers/{address}")
async def api_remove(
    address: str,
    app: DigestApp,
    now: Now,
    list_slug: str | None = Query(default=None, alias="list"),
    erase: bool = False,
) -> dict[str, Any]:
    """Unsubscribe a reader (method `operator`) from one list or all; `erase=true` erases them as
    `digest subscribers erase` does: only a hash of the address is kept, which refuses re-adds."""
    email, key = _address_key(address)
    list_id = await list_or_404(app, list_slug)
    if erase:
        try:
            await retention.erase_reader(app, email, now)
        except UsageError:
            raise ApiError(404, "not_found", "no such subscriber") from None
        return {"email": email, "erased": True}
    async with app.db.write() as s:
        reader = await readers_store.subscriber_by_email(s, key)
        if reader is None:
            raise ApiError(404, "not_found", "no such subscriber")
        left = []
        for sub, lst in await readers_store.subscriptions_of(s, reader.id):
            wanted = list_id is None or lst.id == list_id
            if wanted and await readers.unsubscribe(s, sub, "operator", now):
                left.append(lst.slug)
    return {"email": reader.email, "unsubscribed": left}


@router.post("/api/sources/{name}/articles", status_code=201)
async def api_push(name: str, body: ArticleBatch | ArticleIn, app: DigestApp, now: Now) -> dict[str, int]:
    """Push articles into a source of kind `api`; they are normalized like ingested ones."""
    if name not in {src.name for src in app.cfg.sources}:
        raise ApiError(404, "not_found", f"no source {name!r}")
    async with app.db.read() as s:
        source = await sources_store.source_by_name(s, name)
    if source is None:
        raise ApiError(404, "not_found", f"no source {name!r}")
    if source.kind != "api":
        raise ApiError(409, "wrong_kind", f"source {name!r} is of kind {source.kind}, not api")
    items = [pushed_article(a, now) for a in (body.articles if isinstance(body, ArticleBatch) else [body])]
    async with app.db.write() as s:
        stored = await sources_store.store_articles(s, source.id, items, now)
        await topics.match_articles(app, s, stored.article_ids)
    return {
        "received": len(items),
        "stored": stored.new,
        "updated": stored.updated,
        "known": stored.known,
        "linked": stored.linked,
    }


def pushed_article(item: ArticleIn, now: datetime) -> NewArticle:
    """A pushed article, normalized by the function that normalizes fetched ones."""
    if item.url and not extract.canonical_url(item.url):
        raise ApiError(422, "invalid", "url must be an absolute http(s) URL")
    published = item.published_at
    if published is not None:
        published = (published if published.tzinfo else published.replace(tzinfo=UTC)).astimezone(UTC)
    article = source_items.normalize_article(
        guid=_client_text(item.guid, 1000),
        link=item.url,
        title=signup_form.clean_text(item.title, 2000),
        content_html=item.content_html,
        now=now,
        author=_client_text(item.author, 500),
        published=published,
        summary=_client_text(item.summary, 5000),
        image=item.image_url,
        categories=item.categories,
        untitled="",  # a feed may lack a title; an API client is told to send one
    )
    if not article.title:
        raise ApiError(422, "invalid", "an article needs a title or content")
    return article


def _client_text(value: str | None, max_len: int) -> str | None:
    return signup_form.clean_text(value, max_len) if value else None


def _address_key(address: str) -> tuple[str, str]:
    try:
        return readers.normalize_address(address)
    except DigestError:
        raise ApiError(404, "not_found", "no such subscriber") from None


def _csv_safe(value: str) -> str:
    # A cell starting with = + - @ runs as a formula in spreadsheets (CSV injection).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
