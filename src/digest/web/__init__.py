"""The web edge: signup, confirm, preferences, unsubscribe, archive, health, and the operator API.

Rules every route keeps:
- GET and HEAD never change state (scanners and link prefetchers follow them); each state change
  is a POST from a page with a button.
- POST /subscribe answers the same way whatever the address's state (no enumeration); the work
  that depends on that state runs after the answer is sent.
- HTML forms carry a CSRF token (csrf.py). The unsubscribe URL is exempt: it is the RFC 8058
  one-click endpoint, which mail providers call without cookies, and answers 200 without a
  redirect. The JSON API is exempt too: a cross-site form cannot send `application/json`.
- No redirect target ever comes from the request; bodies are size-limited (guard.py); client
  addresses come from `X-Forwarded-For` only behind a trusted proxy (limits.py).
- Operator endpoints under /api need `Authorization: Bearer <[api] token>`; their errors, like the
  JSON signup's, are `{"error": {"code": ..., "message": ...}}`.

One router per area (subscribe, confirm, account, archive, admin, api, health); what they share
reaches them as FastAPI dependencies (deps.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from digest import bootstrap, signup
from digest.errors import DigestError
from digest.web import account, admin, api, archive, confirm, csrf, health, limits, stories, subscribe
from digest.web.deps import WebState
from digest.web.errors import ApiError, error_json, wants_json
from digest.web.guard import Guard
from digest.web.render import message

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
        limiter=limits.RateLimiter(rate_limits or limits.RateLimits()),
        trust=limits.ProxyTrust(app.cfg.web.trusted_proxies),
        consent_text=" ".join(consent_source.split()).replace("{sender}", signup.sender_name(app)),
        consent_version="sha256:" + hashlib.sha256(consent_source.encode()).hexdigest()[:16],
        min_fill=min_fill,
        confirmations_per_hour=confirmations_per_hour,
        wake=wake,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_purge_loop(state, purge_every)) if purge_every else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asgi = FastAPI(
        title="digest",
        summary="Email digests: reader signup and the operator API.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _on_api_error,
            RequestValidationError: _on_invalid,
            StarletteHTTPException: _on_http,
            DigestError: _on_digest_error,
        },
    )
    asgi.state.web = state
    for area in (health, subscribe, confirm, account, archive, stories, admin, api):
        asgi.include_router(area.router)
    asgi.add_middleware(Guard, base_origin="/".join(app.base_url.split("/")[:3]))
    return asgi


async def _purge_loop(web: WebState, every: timedelta) -> None:
    while True:
        try:
            await signup.purge_stale_signups(web.app, web.clock())
        except Exception:
            log.exception("purging unconfirmed signups failed")
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


async def _on_http(request: Request, exc: StarletteHTTPException) -> Response:
    if wants_json(request):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_json(exc.status_code, code, str(exc.detail))
    return message(request, "Page not found" if exc.status_code == 404 else "That did not work",
                   str(exc.detail), status=exc.status_code)  # fmt: skip


async def _on_digest_error(request: Request, exc: DigestError) -> Response:
    if wants_json(request):
        return error_json(422, "invalid", str(exc))
    return message(request, "That did not work", str(exc), status=422)
