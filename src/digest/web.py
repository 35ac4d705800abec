"""The web edge: health, unsubscribe (page and RFC 8058 one-click), articles and the public archive.

GET never changes state (scanners and link prefetchers follow GETs); the one-click POST needs no
cookie or CSRF token and answers 200 without a redirect, as RFC 8058 requires.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from digest import db, extract, pipeline
from digest.rendering import TOKEN_PLACEHOLDER

MAX_BODY = 64 * 1024


def create_app(app: pipeline.App) -> FastAPI:
    api = FastAPI(title="digest", docs_url=None, redoc_url=None)
    pages = Jinja2Templates(directory=str(pipeline.templates_dir(app.cfg) / "web"))
    base_url = app.base_url

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return pages.TemplateResponse(
            request, template, {"base_url": base_url, **context}, status_code=status
        )

    def message(
        request: Request, title: str, *paragraphs: str, status: int = 200, **extra: Any
    ) -> HTMLResponse:
        context = {
            "title": title,
            "paragraphs": paragraphs,
            "form_action": None,
            "form_fields": {},
            "button": "",
            "link": None,
            **extra,
        }
        return page(request, "message.html", status, **context)

    @api.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length and (not length.isdigit() or int(length) > MAX_BODY):
            return JSONResponse({"error": "request body too large"}, status_code=413)
        response: Response = await call_next(request)
        return response

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        async with app.db.read() as s:
            await db.ping(s)
        return {"status": "ok"}

    def inert(request: Request, token: str) -> HTMLResponse | None:
        if token == pipeline.TEST_TOKEN:
            return message(request, "This was a test", "This link came from a test send, so it does nothing.")
        if token in ("archive", "preview", TOKEN_PLACEHOLDER):
            return message(
                request,
                "Public copy",
                "This is the public copy of a digest; its links belong to no reader.",
                link={"url": f"{base_url}/subscribe", "text": "Subscribe"},
            )
        return None

    def unknown(request: Request) -> HTMLResponse:
        return message(
            request,
            "Link not recognised",
            "This link is not valid. If you copied it, check that it is complete.",
            status=404,
        )

    @api.get("/u/{token}", response_class=HTMLResponse)
    async def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
        if (shown := inert(request, token)) is not None:
            return shown
        async with app.db.read() as s:
            sub = await db.subscription_by_token(s, token)
            lst = await db.list_by_id(s, sub.list_id) if sub else None
        if sub is None or lst is None:
            return unknown(request)
        if sub.status == "unsubscribed":
            return message(request, "You are unsubscribed", f"You will get no more digests from {lst.name}.")
        return message(
            request,
            f"Unsubscribe from {lst.name}?",
            "One click and you will get no more digests from this list.",
            form_action=f"{base_url}/u/{token}",
            button="Unsubscribe",
        )

    @api.post("/u/{token}", response_class=HTMLResponse)
    async def unsubscribe(request: Request, token: str) -> HTMLResponse:
        if (shown := inert(request, token)) is not None:
            return shown
        form = await request.form()
        one_click = form.get("List-Unsubscribe") == "One-Click"
        async with app.db.write() as s:
            sub = await db.subscription_by_token(s, token)
            lst = await db.list_by_id(s, sub.list_id) if sub else None
            if sub is None or lst is None:
                return unknown(request)
            await pipeline.unsubscribe(s, sub, "one-click" if one_click else "link", datetime.now(UTC))
        return message(request, "You are unsubscribed", f"You will get no more digests from {lst.name}.")

    @api.get("/p/{token}", response_class=HTMLResponse)
    async def preferences(request: Request, token: str) -> HTMLResponse:
        if (shown := inert(request, token)) is not None:
            return shown
        async with app.db.read() as s:
            sub = await db.subscription_by_token(s, token)
            lst = await db.list_by_id(s, sub.list_id) if sub else None
        if sub is None or lst is None:
            return unknown(request)
        return message(
            request,
            f"Your subscription to {lst.name}",
            f"Status: {sub.status}. Cadence: {sub.cadence}.",
            link={"url": f"{base_url}/u/{token}", "text": "Unsubscribe"},
        )

    @api.get("/articles/{article_id}", response_class=HTMLResponse)
    async def article(request: Request, article_id: int) -> HTMLResponse:
        async with app.db.read() as s:
            found = await db.article_by_id(s, article_id)
        if found is None:
            return message(request, "No such article", status=404)
        content = Markup(extract.sanitize_html(found.content))  # noqa: S704 (sanitized by nh3 just above)
        return page(request, "article.html", article=found, content=content, title=found.title)

    @api.get("/archive/{slug}", response_class=HTMLResponse)
    async def archive(request: Request, slug: str) -> HTMLResponse:
        async with app.db.read() as s:
            lst = await db.list_by_slug(s, slug)
            editions = await db.public_editions(s, lst.id) if lst and lst.public else []
        if lst is None or not lst.public:
            return message(request, "No such list", status=404)
        return page(request, "archive.html", list=lst, editions=editions, title=lst.name)

    @api.get("/archive/{slug}/{edition_id}", response_class=HTMLResponse)
    async def edition(request: Request, slug: str, edition_id: int) -> Response:
        async with app.db.read() as s:
            lst = await db.list_by_slug(s, slug)
            found = await db.edition_by_id(s, edition_id)
        if lst is None or found is None or found.list_id != lst.id:
            return message(request, "No such digest", status=404)
        if found.kind == "test":
            token = pipeline.TEST_TOKEN
        elif lst.public:
            token = "archive"  # noqa: S105 (a marker, not a secret)
        else:
            return message(request, "No such digest", status=404)
        # Neutral links: the stored HTML holds only the placeholder, never a reader's token.
        return HTMLResponse(found.html.replace(TOKEN_PLACEHOLDER, token))

    return api
