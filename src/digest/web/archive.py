"""The public archive: the lists, each list's past digests, and the article pages digests link to."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from digest import extract, personal, tokens
from digest.rendering import TOKEN_PLACEHOLDER
from digest.store import reports as reports_store
from digest.store import sources as sources_store
from digest.web.deps import DigestApp
from digest.web.render import message, page
from digest.web.subscribe import signup_lists

router = APIRouter(tags=["pages"])


@router.get("/articles/{article_id}", response_class=HTMLResponse)
async def article(request: Request, article_id: int, app: DigestApp) -> HTMLResponse:
    async with app.db.read() as s:
        found = await reports_store.article_by_id(s, article_id) if 0 < article_id < 2**62 else None
    if found is None:
        return message(request, "No such article", status=404)
    content = Markup(extract.sanitize_html(found.content))  # noqa: S704 (sanitized by nh3 just above)
    return page(request, "article.html", article=found, content=content, title=found.title)


@router.get("/archive", response_class=HTMLResponse)
async def archive_index(request: Request, app: DigestApp) -> HTMLResponse:
    lists = await signup_lists(app, None)
    return page(request, "lists.html", lists=lists, title="Archive")


@router.get("/archive/{slug}", response_class=HTMLResponse)
async def archive(request: Request, slug: str, app: DigestApp) -> HTMLResponse:
    async with app.db.read() as s:
        lst = await sources_store.list_by_slug(s, slug)
        editions = await reports_store.public_editions(s, lst.id) if lst and lst.public else []
    if lst is None or not lst.public:
        return message(request, "No such list", status=404)
    return page(request, "archive.html", list=lst, editions=editions, title=lst.name)


@router.get("/archive/{slug}/{edition_id}", response_class=HTMLResponse)
async def edition(request: Request, slug: str, edition_id: int, app: DigestApp, t: str = "") -> Response:
    async with app.db.read() as s:
        lst = await sources_store.list_by_slug(s, slug)
        found = await reports_store.edition_by_id(s, edition_id) if 0 < edition_id < 2**62 else None
        published = found is not None and await reports_store.is_published(s, found.id)
    if lst is None or found is None or found.list_id != lst.id:
        return message(request, "No such digest", status=404)
    if found.kind == "test":
        # A test send is a draft: only the link in that test mail (signed) opens its copy.
        if not tokens.is_draft_copy_signature(t, found.id, app.keys):
            return message(request, "No such digest", status=404)
        token = tokens.TEST_TOKEN
    elif lst.public and published:
        token = "archive"  # noqa: S105 (a marker, not a secret)
    else:
        return message(request, "No such digest", status=404)
    # Neutral links: the stored HTML holds only the placeholder, never a reader's token; no
    # greeting, and dates in the list's zone.
    return HTMLResponse(personal.public_copy(found.html, lst.timezone).replace(TOKEN_PLACEHOLDER, token))
