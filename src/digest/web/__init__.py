"""The web edge: signup, confirm, preferences, unsubscribe, archive, health, and the operator API.

Rules every route keeps:
- GET and HEAD never change state (scanners and link prefetchers follow them); each state change
  is a POST from a page with a button.
- POST /subscribe answers the same way whatever the address's state (no enumeration); the work
  that depends on that state goes to the app's work queue (work.py), off the connection's path.
- HTML forms carry a CSRF token (csrf.py). The unsubscribe URL is exempt: it is the RFC 8058
  one-click endpoint, which mail providers call without cookies, and answers 200 without a
  redirect. The JSON API is exempt too: a cross-site form cannot send `application/json`.
- No redirect target ever comes from the request; bodies are size-limited (guard.py); client
  addresses come from `X-Forwarded-For` only behind a trusted proxy (limits.py).
- Operator endpoints under /api need `Authorization: Bearer <[api] token>`; their errors, like the
  JSON signup's, are `{"error": {"code": ..., "message": ...}}`. The admin page takes the same
  header or a session cookie from its login form; the token never travels in a URL (auth.py).
  /openapi.json lists the operator API only to that header (schema.py).
- Redirects and absolute URLs are built from `[web] base_url`, never from the Host header.
- A NUL or lone surrogate in a path, query, form or JSON string, or JSON nested too deep, gets a
  4xx before any route runs (inputs.py).

One router per area (subscribe, confirm, account, archive, admin, api, health, schema); what they
share reaches them as FastAPI dependencies (deps.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import jinja2
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from digest import bootstrap, signup
from digest.errors import DigestError
from digest.web import (
    account,
    admin,
    api,
    archive,
    auth,
    confirm,
    csrf,
    health,
    inputs,
    limits,
    schema,
    stories,
    subscribe,
)
from digest.web.deps import WebState, web_state
from digest.web.errors import ApiError, error_json, wants_json
from digest.web.guard import Guard
from digest.web.render import message
from digest.web.work import WorkQueue

log = logging.getLogger("digest")


def create_app(
    app: bootstrap.App,
    *,
    rate_limits: limits.RateLimits | None = None,
    min_fill: timedelta = timedelta(seconds=2),
    clock: Callable[[], datetime] = bootstrap.utcnow,
    confirmations_per_hour: int | None = 1000,
    purge_every: timedelta | None = timedelta(hours=1),
    wake: asyncio.Event | None = None,
) -> FastAPI:
    """The ASGI app. Tests relax `rate_limits`, shorten `min_fill` and move `clock`.

    `wake` is set whenever mail was queued, so the delivery loop in the same process sends a
    confirmation at once instead of at its next poll.
    """
    templates_dir = bootstrap.templates_dir(app.cfg) / "web"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    consent_source = (templates_dir / "consent.txt").read_text(encoding="utf-8")
    state = WebState(
        app=app,
        clock=clock,
        base_url=app.base_url,
        templates=Jinja2Templates(env=env),
        forms=csrf.FormGuard(app.keys),
        secure_cookie=app.base_url.startswith("https://"),
        limiter=limits.RateLimiter(rate_limits or limits.RateLimits(), app.keys[0]),
        trust=limits.ProxyTrust(app.cfg.web.trusted_proxies),
        consent_text=" ".join(consent_source.split()).replace("{sender}", signup.sender_name(app)),
        consent_version="sha256:" + hashlib.sha256(consent_source.encode()).hexdigest()[:16],
        min_fill=min_fill,
        confirmations_per_hour=confirmations_per_hour,
        wake=wake,
        work=WorkQueue(wake),
        admin_sessions=auth.AdminSessions(app.keys),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_purge_loop(state, purge_every)) if purge_every else None
        try:
            yield
        finally:
            await state.work.close()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asgi = FastAPI(
        title="digest",
        summary="Email digests: reader signup and the operator API.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # schema.py serves it, with the operator API for the operator only
        dependencies=[Depends(inputs.refuse_unclean_strings)],
        lifespan=lifespan,
        exception_handlers={
            ApiError: _on_api_error,
            RequestValidationError: _on_invalid,
            StarletteHTTPException: _on_http,
            DigestError: _on_digest_error,
        },
    )
    asgi.state.web = state
    # Starlette's own trailing-slash redirect builds its target from the Host header; _on_http
    # redirects to `base_url` instead.
    asgi.router.redirect_slashes = False
    for area in (health, subscribe, confirm, account, archive, stories, admin, api, schema):
        asgi.include_router(area.router)
    asgi.add_middleware(Guard, base_origin="/".join(app.base_url.split("/")[:3]))
    return asgi


async def _purge_loop(web: WebState, every: timedelta) -> None:
    while True:
        try:
            await signup.purge_stale_signups(web.app, web.clock())
            await web.limiter.prune(web.app.db, web.clock())
        except Exception:
            log.exception("purging unconfirmed signups or finished rate-limit windows failed")
        await asyncio.sleep(every.total_seconds())


async def _on_api_error(request: Request, exc: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(
        {"error": {"code": exc.code, "message": exc.message, **exc.extra}},
        status_code=exc.status,
        headers=headers,
    )


async def _on_invalid(request: Request, exc: RequestValidationError) -> Response:
    problems = []
    for e in exc.errors()[:10]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        problems.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    if not wants_json(request):
        return message(request, "That did not work", *problems, status=422)
    return error_json(422, "invalid", "; ".join(problems) or "invalid request")


def _without_slash(request: Request) -> str | None:
    """The `base_url` address of the route a path with a trailing slash means, if there is one."""
    path = request.url.path
    if len(path) < 2 or not path.endswith("/") or not inputs.clean(path):
        return None
    stripped = path.rstrip("/")
    scope = {**request.scope, "path": stripped}
    if all(route.matches(scope)[0] == Match.NONE for route in request.app.router.routes):
        return None
    query = request.scope.get("query_string", b"").decode("latin-1")
    return web_state(request).base_url + stripped + (f"?{query}" if query else "")


async def _on_http(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 404 and (target := _without_slash(request)) is not None:
        return RedirectResponse(target, status_code=307 if request.method not in ("GET", "HEAD") else 308)
    if wants_json(request):
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 422: "invalid"}.get(
            exc.status_code, "http_error"
        )
        return error_json(exc.status_code, code, str(exc.detail))
    return message(request, "Page not found" if exc.status_code == 404 else "That did not work",
                   str(exc.detail), status=exc.status_code)  # fmt: skip


async def _on_digest_error(request: Request, exc: DigestError) -> Response:
    if wants_json(request):
        return error_json(422, "invalid", str(exc))
    return message(request, "That did not work", str(exc), status=422)
