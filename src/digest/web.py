"""The web edge: signup, confirm, preferences, unsubscribe, archive, health, and the operator API.

Rules every route keeps:
- GET and HEAD never change state (scanners and link prefetchers follow them); each state change
  is a POST from a page with a button.
- POST /subscribe answers the same way whatever the address's state (no enumeration); the work
  that depends on that state runs after the answer is sent.
- HTML forms carry a CSRF token (csrf.py). The unsubscribe URL is exempt: it is the RFC 8058
  one-click endpoint, which mail providers call without cookies, and answers 200 without a
  redirect. The JSON API is exempt too: a cross-site form cannot send `application/json`.
- No redirect target ever comes from the request; bodies are size-limited; client addresses come
  from `X-Forwarded-For` only behind a trusted proxy.
- Operator endpoints under /api need `Authorization: Bearer <[api] token>`; their errors, like the
  JSON signup's, are `{"error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import hmac
import io
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import available_timezones

import jinja2
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from digest import (
    bootstrap,
    csrf,
    delivery,
    extract,
    ingest,
    limits,
    observability,
    preferences,
    readers,
    readers_io,
    schedule,
    signup,
    signup_form,
)
from digest.errors import DigestError
from digest.models import SubscriptionStatus
from digest.rendering import TOKEN_PLACEHOLDER
from digest.store import migrate
from digest.store import readers as readers_store
from digest.store import reports as reports_store
from digest.store import sources as sources_store

log = logging.getLogger("digest")

MAX_BODY = 64 * 1024
MAX_API_BODY = 1024 * 1024
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,100}")
_CONFIRM_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,2000}")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_ZONES = sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/")))
_INERT = frozenset({delivery.TEST_TOKEN, "archive", "preview", TOKEN_PLACEHOLDER})

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ApiError(Exception):
    """An error the API answers as {"error": {"code", "message"}}."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_json(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


class _Guard:
    """Pure ASGI: refuse oversized bodies (declared or streamed), add security headers and a CSP nonce."""

    def __init__(self, app: Any, base_origin: str) -> None:
        self.app = app
        self.base_origin = base_origin

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = MAX_API_BODY if scope["path"].startswith("/api/") else MAX_BODY
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._too_large(send)
            return
        if declared is None and scope["method"] not in ("GET", "HEAD"):
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    await self._too_large(send)
                    return
            receive = _replay(bytes(body))
        nonce = secrets.token_urlsafe(16)
        scope.setdefault("state", {})["csp_nonce"] = nonce
        csp = (
            "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; "
            f"script-src 'nonce-{nonce}'; form-action 'self' {self.base_origin}; "
            "frame-ancestors 'none'; base-uri 'none'"
        ).encode()

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", csp),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    async def _too_large(send: Send) -> None:
        body = json.dumps(
            {"error": {"code": "too_large", "message": "The request body is too large."}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def wants_json(request: Request) -> bool:
    if request.url.path.startswith("/api/") or _content_type(request) == "application/json":
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


class SignupIn(BaseModel):
    """POST /subscribe fields (JSON, or the same names form-encoded; `list` repeats in a form)."""

    email: str = Field(description="The reader's address.", examples=["ann@example.com"])
    name: str = ""
    lists: str | list[str] = Field(
        alias="list", description="A list slug, or several; one confirmation covers all."
    )
    cadence: Literal["default", "daily", "weekly"] = "default"
    weekday: int | str | None = Field(default=None, description="0 (Monday) to 6, or mon..sun; for weekly.")
    send_hour: int | None = Field(default=None, ge=0, le=23, description="Local hour; for daily and weekly.")
    timezone: str | None = Field(default=None, description="IANA time zone such as Europe/Berlin.")
    consent: bool = Field(description="The reader ticked the consent checkbox.")
    consent_text_version: str | None = None
    source: str | None = Field(default=None, description="The page the reader signed up on.")


class Accepted(BaseModel):
    status: Literal["accepted"]
    message: str


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


class ArticleBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    articles: list[ArticleIn] = Field(min_length=1, max_length=200)


def api_article(item: ArticleIn, now: datetime) -> sources_store.NewArticle:
    """A pushed article, normalized by the function that normalizes fetched ones."""
    if item.url and not extract.canonical_url(item.url):
        raise ApiError(422, "invalid", "url must be an absolute http(s) URL")
    published = item.published_at
    if published is not None:
        published = (published if published.tzinfo else published.replace(tzinfo=UTC)).astimezone(UTC)
    article = ingest.normalize_article(
        guid=_client_text(item.guid, 1000),
        link=item.url,
        title=signup_form.clean_text(item.title, 2000),
        content_html=item.content_html,
        now=now,
        author=_client_text(item.author, 500),
        published=published,
        summary=_client_text(item.summary, 5000),
        image=item.image_url,
        untitled="",  # a feed may lack a title; an API client is told to send one
    )
    if not article.title:
        raise ApiError(422, "invalid", "an article needs a title or content")
    return sources_store.NewArticle(
        guid=article.guid,
        url=article.url,
        title=article.title,
        author=article.author,
        published_at=article.published_at,
        summary=article.summary,
        content=article.content_html,
        image_url=article.image_url,
        fingerprint=article.fingerprint,
    )


def _client_text(value: str | None, max_len: int) -> str | None:
    return signup_form.clean_text(value, max_len) if value else None


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
    base_url = app.base_url
    base_origin = "/".join(base_url.split("/")[:3])
    guard = csrf.FormGuard(app.keys)
    limiter = limits.RateLimiter(rate_limits or limits.RateLimits())
    trust = limits.ProxyTrust(app.cfg.web.trusted_proxies)
    secure_cookie = base_url.startswith("https://")
    templates_dir = bootstrap.templates_dir(app.cfg) / "web"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    pages = Jinja2Templates(env=env)
    consent_source = (templates_dir / "consent.txt").read_text(encoding="utf-8")
    consent_version = "sha256:" + hashlib.sha256(consent_source.encode()).hexdigest()[:16]
    consent_text = " ".join(consent_source.split()).replace("{sender}", signup.sender_name(app))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(purge_loop()) if purge_every else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def purge_loop() -> None:
        assert purge_every is not None
        while True:
            try:
                await signup.purge_stale_signups(app, clock())
            except Exception:
                log.exception("purging unconfirmed signups failed")
            await asyncio.sleep(purge_every.total_seconds())

    api = FastAPI(
        title="digest",
        summary="Email digests: reader signup and the operator API.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )

    # ------------------------------------------------------------ helpers

    def page(
        request: Request, template: str, status: int = 200, *, form: bool = False, **context: Any
    ) -> HTMLResponse:
        cookie, fresh = guard.cookie_value(request.cookies.get(csrf.COOKIE)) if form else ("", False)
        response = pages.TemplateResponse(
            request,
            template,
            {
                "base_url": base_url,
                "csp_nonce": getattr(request.state, "csp_nonce", ""),
                "csrf_field": csrf.FIELD,
                "csrf_token": guard.token_for(cookie) if form else "",
                "notice": None,
                **context,
            },
            status_code=status,
        )
        if fresh:
            response.set_cookie(
                csrf.COOKIE, cookie, httponly=True, samesite="lax", secure=secure_cookie, path="/"
            )
        response.headers["cache-control"] = "no-store"
        return response

    def message(
        request: Request,
        title: str,
        *paragraphs: str,
        status: int = 200,
        form_action: str | None = None,
        button: str = "",
        link: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        response = page(
            request,
            "message.html",
            status,
            form=form_action is not None,
            title=title,
            paragraphs=paragraphs,
            form_action=form_action,
            button=button,
            link=link,
        )
        response.headers.update(headers or {})
        return response

    def client_ip(request: Request) -> str | None:
        forwarded = ", ".join(request.headers.getlist("x-forwarded-for")) or None
        return trust.client_ip(request.client.host if request.client else None, forwarded)

    def user_agent(request: Request) -> str | None:
        return signup_form.clean_text(request.headers.get("user-agent", ""), signup_form.TEXT_MAX) or None

    def web_url(value: object) -> str | None:
        if not isinstance(value, str):
            return None
        text = signup_form.clean_text(value, signup_form.TEXT_MAX)
        return text if re.match(r"https?://[^\s/]+", text) else None

    def too_many(request: Request, wait: float) -> Response:
        minutes = max(1, round(wait / 60))
        retry = {"Retry-After": str(max(1, int(wait + 0.999)))}
        text = f"Too many requests from your network. Please wait about {minutes} minute(s) and try again."
        if wants_json(request):
            return JSONResponse(
                {"error": {"code": "rate_limited", "message": text}}, status_code=429, headers=retry
            )
        return message(request, "Please slow down", text, status=429, headers=retry)

    def rate_limited(request: Request) -> Response | None:
        wait = limiter.check(client_ip(request) or "unknown")
        return None if wait is None else too_many(request, wait)

    def unknown(request: Request) -> HTMLResponse:
        return message(
            request,
            "Link not recognised",
            "This link is not valid. If you copied it, check that it is complete.",
            status=404,
        )

    def inert(request: Request, token: str) -> HTMLResponse | None:
        if token == delivery.TEST_TOKEN:
            return message(request, "This was a test", "This link came from a test send, so it does nothing.")
        if token in _INERT:
            return message(
                request,
                "Public copy",
                "This is the public copy of a digest; its links belong to no reader.",
                link={"url": f"{base_url}/subscribe", "text": "Subscribe"},
            )
        return None

    async def read_form(request: Request) -> FormData | None:
        try:
            return await request.form(max_files=0, max_fields=200, max_part_size=MAX_BODY)
        except Exception:
            return None

    def in_background(coro_fn: Callable[[], Awaitable[Any]], what: str) -> BackgroundTask:
        async def run() -> None:
            try:
                await coro_fn()
            except Exception:
                log.exception("%s failed", what)
            if wake is not None:
                wake.set()

        return BackgroundTask(run)

    # ------------------------------------------------------------ errors

    @api.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            {"error": {"code": exc.code, "message": exc.message, **exc.extra}},
            status_code=exc.status,
            headers=headers,
        )

    @api.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for e in exc.errors()[:10]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            problems.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
        if not wants_json(request):
            return message(request, "That did not work", *problems, status=422)
        return error_json(422, "invalid", "; ".join(problems) or "invalid request")

    @api.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        if wants_json(request):
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
            return error_json(exc.status_code, code, str(exc.detail))
        return message(request, "Page not found" if exc.status_code == 404 else "That did not work",
                       str(exc.detail), status=exc.status_code)  # fmt: skip

    @api.exception_handler(DigestError)
    async def on_digest_error(request: Request, exc: DigestError) -> Response:
        if wants_json(request):
            return error_json(422, "invalid", str(exc))
        return message(request, "That did not work", str(exc), status=422)

    def readable(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A GET page that also answers HEAD (which, like GET, changes nothing)."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            api.add_api_route(path, fn, methods=["GET"], response_class=HTMLResponse, tags=["pages"])
            api.add_api_route(
                path, fn, methods=["HEAD"], response_class=HTMLResponse, include_in_schema=False
            )
            return fn

        return register

    # ------------------------------------------------------------ health

    @api.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        async with app.db.read() as s:
            await reports_store.ping(s)
        return {"status": "ok"}

    @api.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        """Ready to serve: the database answers and its schema is the one this code needs."""
        try:
            async with app.db.read() as s:
                await reports_store.ping(s)
            await migrate.check_schema(app.db)
        except DigestError as exc:
            return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
        except Exception as exc:
            reason = f"database: {type(exc).__name__}"
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @api.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus metrics computed from the database at scrape time (see digest.observability)."""
        body = await observability.render_metrics(app, clock())
        return Response(body, media_type=observability.CONTENT_TYPE)

    # ------------------------------------------------------------ signup

    async def signup_lists(slug: str | None) -> list[dict[str, Any]]:
        async with app.db.read() as s:
            lists = await sources_store.active_lists(s)
        return [
            {
                "slug": lst.slug,
                "name": lst.name,
                "description": lst.description,
                "schedule": schedule.describe_schedule(lst.schedule, lst.timezone),
            }
            for lst in lists
            if (lst.slug == slug if slug else lst.public)
        ]

    def signup_page(
        request: Request,
        lists: list[dict[str, Any]],
        single: str | None,
        *,
        values: dict[str, Any] | None = None,
        errors: dict[str, str] | None = None,
        status: int = 200,
        ref: str | None = None,
    ) -> HTMLResponse:
        values = values or {}
        chosen = values.get("list") or ([single] if single else [])
        return page(
            request,
            "subscribe.html",
            status,
            form=True,
            title=f"Subscribe to {lists[0]['name']}" if single and lists else "Subscribe",
            lists=lists,
            single=single,
            chosen=chosen,
            values=values,
            errors=errors or {},
            stamp=guard.stamp(clock()),
            ref=ref or "",
            weekdays=["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
            zones=_ZONES,
            consent_text=consent_text,
        )

    @readable("/subscribe")
    async def subscribe_page(request: Request) -> HTMLResponse:
        """The signup form for every public list."""
        lists = await signup_lists(None)
        return signup_page(request, lists, None, ref=web_url(request.headers.get("referer")))

    @readable("/subscribe/{slug}")
    async def subscribe_one_page(request: Request, slug: str) -> HTMLResponse:
        """The signup form for one list."""
        lists = await signup_lists(slug)
        if not lists:
            return message(request, "No such list", "There is no list by that name.", status=404)
        return signup_page(request, lists, slug, ref=web_url(request.headers.get("referer")))

    accepted_text = "Check your inbox: if this address can receive mail, a confirmation link is on its way."

    def accepted_page(request: Request, address: str, task: BackgroundTask | None) -> HTMLResponse:
        response = message(
            request,
            "Check your inbox",
            f"We have sent a confirmation link to {address}, if it can receive mail.",
            "Open the link in that email to confirm. Nothing is sent to you until you do. "
            "If it does not arrive within a few minutes, look in your spam folder.",
        )
        response.background = task
        return response

    def signup_task(item: signup_form.Signup, method: str) -> BackgroundTask:
        now = clock()
        return in_background(
            lambda: signup.request_confirmation(
                app, item, now, method=method, hourly_budget=confirmations_per_hour
            ),
            "signup",
        )

    @api.post(
        "/subscribe",
        tags=["signup"],
        response_model=Accepted,
        status_code=202,
        summary="Sign up for one or more lists (double opt-in)",
        description=(
            "Accepts JSON (below) or the same fields form-encoded from the signup page (which also "
            "needs its CSRF token). The answer is the same for new, pending, confirmed and "
            "unsubscribed addresses; one confirmation email covers every list of the request, at "
            "most once per address and list every 24 hours."
        ),
        responses={
            422: {"description": "A field needs fixing: {error: {code, message, fields}}"},
            429: {"description": "Too many signups from this address"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": SignupIn.model_json_schema()},
                    "application/x-www-form-urlencoded": {"schema": SignupIn.model_json_schema()},
                },
            }
        },
    )
    async def subscribe(request: Request) -> Response:
        ctype = _content_type(request)
        if ctype == "application/json":
            return await subscribe_json(request)
        if ctype in _FORM_TYPES:
            return await subscribe_form(request)
        return error_json(
            415, "unsupported_media_type", "Send JSON or a form (application/x-www-form-urlencoded)."
        )

    async def subscribe_json(request: Request) -> Response:
        if (limited := rate_limited(request)) is not None:
            return limited
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return error_json(400, "bad_json", "The body is not valid JSON.")
        if not isinstance(body, dict):
            return error_json(422, "invalid", "The body must be a JSON object.")
        version = body.get("consent_text_version")
        consent = readers.Consent(
            ip=client_ip(request),
            user_agent=user_agent(request),
            source=web_url(body.get("source"))
            or web_url(request.headers.get("origin"))
            or web_url(request.headers.get("referer"))
            or "api",
            referer=web_url(request.headers.get("referer")),
            text_version=signup_form.clean_text(version, 64)
            if isinstance(version, str) and version
            else consent_version,
        )
        known = [lst["slug"] for lst in await signup_lists(None)] + await private_slugs()
        try:
            item = signup_form.parse_signup(body, known, consent)
        except signup_form.SignupInvalid as exc:
            return error_json(422, "invalid", "Some fields need fixing.", fields=exc.fields)
        response = JSONResponse({"status": "accepted", "message": accepted_text}, status_code=202)
        if not body.get("website"):
            response.background = signup_task(item, "api")
        return response

    async def private_slugs() -> list[str]:
        async with app.db.read() as s:
            return [lst.slug for lst in await sources_store.active_lists(s) if not lst.public]

    async def subscribe_form(request: Request) -> Response:
        if (limited := rate_limited(request)) is not None:
            return limited
        form = await read_form(request)
        if form is None:
            return message(request, "That did not work", "The form could not be read.", status=400)
        single = form.get("single")
        single = single if isinstance(single, str) and _TOKEN.fullmatch(single) else None
        lists = await signup_lists(single)
        if not lists:
            lists, single = await signup_lists(None), None
        values: dict[str, Any] = {
            k: signup_form.clean_text(v, 320)
            for k, v in form.multi_items()
            if isinstance(v, str) and k != "list"
        }
        values["list"] = [v for v in form.getlist("list") if isinstance(v, str)]
        ref = web_url(form.get("ref"))
        if not guard.valid(request.cookies.get(csrf.COOKIE), form.get(csrf.FIELD)):
            return signup_page(
                request,
                lists,
                single,
                values=values,
                errors={"form": "This form had expired. Please check it and submit it again."},
                status=403,
                ref=ref,
            )
        fields: dict[str, object] = {k: form.get(k) for k in form if k != "list"}
        fields["list"] = values["list"]
        referer = request.headers.get("referer", "")
        consent = readers.Consent(
            ip=client_ip(request),
            user_agent=user_agent(request),
            source=web_url(referer) if referer.startswith(base_url + "/") else f"{base_url}/subscribe",
            referer=ref,
            text_version=consent_version,
        )
        known = [lst["slug"] for lst in lists]
        try:
            item = signup_form.parse_signup(fields, known, consent)
        except signup_form.SignupInvalid as exc:
            return signup_page(request, lists, single, values=values, errors=exc.fields, status=422, ref=ref)
        bot = bool(form.get("website")) or guard.too_fast(form.get(csrf.STAMP_FIELD), clock(), min_fill)
        return accepted_page(request, item.address, None if bot else signup_task(item, "web"))

    # ------------------------------------------------------------ confirm

    def confirm_pairs(request: Request, token: str) -> list[tuple[int, int]] | HTMLResponse:
        """The (subscription, signup time) pairs a confirm token names, or the page to show instead."""
        if not _CONFIRM_TOKEN.fullmatch(token):
            return unknown(request)
        try:
            return signup.read_confirm_token(app.keys, token, clock())
        except signup.TokenExpired:
            return expired_page(request, token)
        except BadSignature:
            return unknown(request)

    def expired_page(request: Request, token: str) -> HTMLResponse:
        return message(
            request,
            "This link has expired",
            "Confirmation links work for 48 hours. You can ask for a fresh one: it goes to the same address.",
            status=410,
            form_action=f"{base_url}/confirm/{token}/resend",
            button="Send me a fresh link",
        )

    async def pending_names(pairs: list[tuple[int, int]]) -> tuple[list[str], bool]:
        """(names of the lists still awaiting this link, whether all of them are confirmed already)."""
        names, confirmed = [], []
        async with app.db.read() as s:
            for sub_id, stamp in pairs:
                sub = await readers_store.subscription_by_id(s, sub_id)
                if sub is None or int(sub.signup_at.timestamp()) != stamp:
                    continue
                lst = await reports_store.list_by_id(s, sub.list_id)
                if lst is None:
                    continue
                if sub.status == SubscriptionStatus.PENDING:
                    names.append(lst.name)
                elif sub.status == SubscriptionStatus.CONFIRMED:
                    confirmed.append(lst.name)
        return names, bool(confirmed) and not names

    def gone(request: Request) -> HTMLResponse:
        return message(
            request,
            "This link is no longer valid",
            "The signup it belonged to was withdrawn or has lapsed. You are welcome to sign up again.",
            status=410,
            link={"url": f"{base_url}/subscribe", "text": "Sign up"},
        )

    @readable("/confirm/{token}")
    async def confirm_page(request: Request, token: str) -> HTMLResponse:
        """Shows a button; only its POST confirms (mail scanners prefetch links)."""
        pairs = confirm_pairs(request, token)
        if isinstance(pairs, HTMLResponse):
            return pairs
        names, done = await pending_names(pairs)
        if done:
            return message(
                request, "You are already subscribed", "Nothing more to do: your subscription is confirmed."
            )
        if not names:
            return gone(request)
        return message(
            request,
            "Confirm your subscription",
            f"Press the button to confirm your subscription to {_join(names)}.",
            form_action=f"{base_url}/confirm/{token}",
            button="Confirm my subscription",
        )

    @api.post("/confirm/{token}", response_class=HTMLResponse, tags=["pages"])
    async def confirm_post(request: Request, token: str) -> HTMLResponse:
        pairs = confirm_pairs(request, token)
        if isinstance(pairs, HTMLResponse):
            return pairs
        form = await read_form(request)
        if form is None or not guard.valid(request.cookies.get(csrf.COOKIE), form.get(csrf.FIELD)):
            return message(
                request,
                "Please press the button again",
                "The form had expired (or your browser did not send back its cookie).",
                status=403,
                form_action=f"{base_url}/confirm/{token}",
                button="Confirm my subscription",
            )
        done = await signup.confirm(
            app, pairs, clock(), ip=client_ip(request), user_agent=user_agent(request)
        )
        if not done.lists:
            return gone(request)
        return message(
            request,
            "You are subscribed",
            f"Thank you: your subscription to {_join(list(done.lists))} is confirmed.",
            link={"url": f"{base_url}/p/{done.token}", "text": "Choose how often you hear from us"}
            if done.token
            else None,
        )

    @api.post("/confirm/{token}/resend", response_class=HTMLResponse, tags=["pages"])
    async def confirm_resend(request: Request, token: str) -> Response:
        if not _CONFIRM_TOKEN.fullmatch(token):
            return unknown(request)
        if (limited := rate_limited(request)) is not None:
            return limited
        try:
            pairs = signup.read_confirm_token(app.keys, token, clock(), max_age=signup.RESEND_WITHIN)
        except BadSignature:
            return unknown(request)
        except signup.TokenExpired:
            return gone(request)
        form = await read_form(request)
        if form is None or not guard.valid(request.cookies.get(csrf.COOKIE), form.get(csrf.FIELD)):
            return expired_page(request, token)
        now = clock()
        response = message(
            request,
            "Check your inbox",
            "If this signup is still waiting, a fresh confirmation link is on its way to the same address.",
        )
        response.background = in_background(
            lambda: signup.resend_confirmation(app, pairs, now, hourly_budget=confirmations_per_hour),
            "resending a confirmation",
        )
        return response

    # ------------------------------------------------------------ unsubscribe (RFC 8058)

    @readable("/u/{token}")
    async def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
        """A page with one button; the GET itself changes nothing."""
        if (shown := inert(request, token)) is not None:
            return shown
        if not _TOKEN.fullmatch(token):
            return unknown(request)
        async with app.db.read() as s:
            sub = await readers_store.subscription_by_token(s, token)
            lst = await reports_store.list_by_id(s, sub.list_id) if sub else None
        if sub is None or lst is None:
            return unknown(request)
        if sub.status == SubscriptionStatus.UNSUBSCRIBED:
            return unsubscribed_page(request, token, lst.name)
        return message(
            request,
            f"Unsubscribe from {lst.name}?",
            "One click and you will get no more digests from this list.",
            form_action=f"{base_url}/u/{token}",
            button="Unsubscribe",
            link={"url": f"{base_url}/p/{token}", "text": "Or change how often you hear from us"},
        )

    def unsubscribed_page(request: Request, token: str, name: str) -> HTMLResponse:
        return message(
            request,
            "You are unsubscribed",
            f"You will get no more digests from {name}.",
            link={"url": f"{base_url}/p/{token}", "text": "Changed your mind? Your preferences"},
        )

    @api.post("/u/{token}", response_class=HTMLResponse, tags=["pages"])
    async def unsubscribe(request: Request, token: str) -> HTMLResponse:
        """The page's button and RFC 8058 one-click: no cookie or CSRF token, 200, never a redirect."""
        if (shown := inert(request, token)) is not None:
            return shown
        if not _TOKEN.fullmatch(token):
            return unknown(request)
        body = await request.body()
        one_click = False
        if _content_type(request) in _FORM_TYPES:
            form = await read_form(request)
            one_click = form is not None and form.get("List-Unsubscribe") == "One-Click"
        else:
            one_click = b"List-Unsubscribe=One-Click" in body
        name = await preferences.unsubscribe_token(app, token, "one-click" if one_click else "link", clock())
        if name is None:
            return unknown(request)
        return unsubscribed_page(request, token, name)

    # ------------------------------------------------------------ preferences

    async def preferences_page(
        request: Request,
        token: str,
        *,
        status: int = 200,
        notice: str | None = None,
        errors: dict[str, str] | None = None,
        values: dict[str, Any] | None = None,
    ) -> HTMLResponse:
        reader = await preferences.reader_for_token(app, token)
        if reader is None:
            return unknown(request)
        async with app.db.read() as s:
            active = await sources_store.active_lists(s)
        mine = set(reader.subscribed) | set(reader.pending)
        lists = [
            {
                "slug": lst.slug,
                "name": lst.name,
                "description": lst.description,
                "schedule": schedule.describe_schedule(lst.schedule, lst.timezone),
                "pending": lst.slug in reader.pending,
            }
            for lst in active
            if lst.public or lst.slug in mine
        ]
        p = reader.prefs
        shown = values or {
            "name": reader.name,
            "cadence": p.cadence,
            "weekday": "" if p.weekday is None else str(p.weekday),
            "send_hour": "" if p.send_hour is None else str(p.send_hour),
            "timezone": p.timezone or "",
            "list": sorted(mine),
        }
        return page(
            request,
            "preferences.html",
            status,
            form=True,
            title="Your preferences",
            token=token,
            email=reader.email,
            lists=lists,
            values=shown,
            chosen=shown.get("list", []),
            errors=errors or {},
            notice=notice,
            weekdays=["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
            zones=_ZONES,
            consent_text=consent_text,
        )

    @readable("/p/{token}")
    async def preferences_show(request: Request, token: str) -> HTMLResponse:
        """Lists, cadence, weekday, send hour, time zone and name; or leave everything."""
        if (shown := inert(request, token)) is not None:
            return shown
        if not _TOKEN.fullmatch(token):
            return unknown(request)
        return await preferences_page(request, token)

    @api.post("/p/{token}", response_class=HTMLResponse, tags=["pages"])
    async def preferences_save(request: Request, token: str) -> Response:
        if (shown := inert(request, token)) is not None:
            return shown
        if not _TOKEN.fullmatch(token):
            return unknown(request)
        form = await read_form(request)
        reader = await preferences.reader_for_token(app, token)
        if reader is None:
            return unknown(request)
        if form is None or not guard.valid(request.cookies.get(csrf.COOKIE), form.get(csrf.FIELD)):
            return await preferences_page(
                request, token, status=403, errors={"form": "This form had expired. Please save again."}
            )
        if (limited := rate_limited(request)) is not None:
            return limited
        fields: dict[str, object] = {k: form.get(k) for k in form if k != "list"}
        fields["list"] = [v for v in form.getlist("list") if isinstance(v, str)]
        fields["email"], fields["consent"] = reader.email, True
        async with app.db.read() as s:
            known = [lst.slug for lst in await sources_store.active_lists(s)]
        values = {k: signup_form.clean_text(v, 320) if isinstance(v, str) else v for k, v in fields.items()}
        try:
            item = signup_form.parse_signup(fields, known, readers.Consent(), require_list=False)
        except signup_form.SignupInvalid as exc:
            return await preferences_page(request, token, status=422, errors=exc.fields, values=values)
        consent = readers.Consent(
            ip=client_ip(request),
            user_agent=user_agent(request),
            source=f"{base_url}/p",
            text_version=consent_version,
        )
        outcome = await preferences.change_preferences(
            app, token, item.lists, item.prefs, clock(), consent=consent, hourly_budget=confirmations_per_hour
        )
        if outcome is None:
            return unknown(request)
        notes = ["Your preferences are saved."]
        if outcome.left:
            notes.append(f"You left {', '.join(outcome.left)}.")
        if outcome.confirmation_for:
            notes.append("We sent a confirmation link for the lists you added; they start once you confirm.")
        return await preferences_page(request, token, notice=" ".join(notes))

    @api.post("/p/{token}/leave", response_class=HTMLResponse, tags=["pages"])
    async def leave(request: Request, token: str) -> HTMLResponse:
        if (shown := inert(request, token)) is not None:
            return shown
        if not _TOKEN.fullmatch(token):
            return unknown(request)
        form = await read_form(request)
        if form is None or not guard.valid(request.cookies.get(csrf.COOKIE), form.get(csrf.FIELD)):
            return message(
                request,
                "Please press the button again",
                "The form had expired (or your browser did not send back its cookie).",
                status=403,
                form_action=f"{base_url}/p/{token}/leave",
                button="Leave every list",
            )
        left = await preferences.leave_everything(app, token, clock())
        if left is None:
            return unknown(request)
        return message(
            request,
            "You have left every list",
            "You will get no more digests from us." if left else "You were not on any list.",
            link={"url": f"{base_url}/p/{token}", "text": "Changed your mind? Your preferences"},
        )

    # ------------------------------------------------------------ articles and archive

    @api.get("/articles/{article_id}", response_class=HTMLResponse, tags=["pages"])
    async def article(request: Request, article_id: int) -> HTMLResponse:
        async with app.db.read() as s:
            found = await reports_store.article_by_id(s, article_id) if 0 < article_id < 2**62 else None
        if found is None:
            return message(request, "No such article", status=404)
        content = Markup(extract.sanitize_html(found.content))  # noqa: S704 (sanitized by nh3 just above)
        return page(request, "article.html", article=found, content=content, title=found.title)

    @api.get("/archive", response_class=HTMLResponse, tags=["pages"])
    async def archive_index(request: Request) -> HTMLResponse:
        lists = await signup_lists(None)
        return page(request, "lists.html", lists=lists, title="Archive")

    @api.get("/archive/{slug}", response_class=HTMLResponse, tags=["pages"])
    async def archive(request: Request, slug: str) -> HTMLResponse:
        async with app.db.read() as s:
            lst = await sources_store.list_by_slug(s, slug)
            editions = await reports_store.public_editions(s, lst.id) if lst and lst.public else []
        if lst is None or not lst.public:
            return message(request, "No such list", status=404)
        return page(request, "archive.html", list=lst, editions=editions, title=lst.name)

    @api.get("/archive/{slug}/{edition_id}", response_class=HTMLResponse, tags=["pages"])
    async def edition(request: Request, slug: str, edition_id: int) -> Response:
        async with app.db.read() as s:
            lst = await sources_store.list_by_slug(s, slug)
            found = await reports_store.edition_by_id(s, edition_id) if 0 < edition_id < 2**62 else None
        if lst is None or found is None or found.list_id != lst.id:
            return message(request, "No such digest", status=404)
        if found.kind == "test":
            token = delivery.TEST_TOKEN
        elif lst.public:
            token = "archive"  # noqa: S105 (a marker, not a secret)
        else:
            return message(request, "No such digest", status=404)
        # Neutral links: the stored HTML holds only the placeholder, never a reader's token.
        return HTMLResponse(found.html.replace(TOKEN_PLACEHOLDER, token))

    # ------------------------------------------------------------ operator API

    def operator(request: Request) -> None:
        expected = app.cfg.api.token
        if not expected:
            raise ApiError(403, "api_disabled", "The operator API is off: set [api] token in the config.")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise ApiError(401, "unauthorized", "Send Authorization: Bearer <the [api] token>.")

    authorized = [Depends(operator)]

    def admin_token_ok(request: Request) -> bool:
        """The admin page takes the [api] token as a bearer header, or as ?token= for a browser."""
        expected = app.cfg.api.token
        if not expected:
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = request.query_params.get("token", "")
        return hmac.compare_digest(given.strip().encode(), expected.encode())

    @api.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    async def admin(request: Request) -> HTMLResponse:
        """Read-only operator overview: lists, recent editions, sends per hour, bounces, unsubscribes."""
        if not app.cfg.api.token:
            return message(
                request, "Admin is off", "Set [api] token in the config to use this page.", status=403
            )
        if not admin_token_ok(request):
            return message(
                request, "Not authorized", "Send Authorization: Bearer <the [api] token>.", status=401
            )
        now = clock()
        view = await admin_view(app, now)
        response = page(request, "admin.html", title="digest: operator overview", **view)
        response.headers["referrer-policy"] = "no-referrer"  # the URL may carry the token
        return response

    async def list_or_404(slug: str | None) -> int | None:
        if slug is None:
            return None
        async with app.db.read() as s:
            lst = await sources_store.list_by_slug(s, slug)
        if lst is None:
            raise ApiError(404, "not_found", f"no list {slug!r}")
        return lst.id

    @api.get("/api/subscribers", dependencies=authorized, tags=["operator"])
    async def api_subscribers(
        list_slug: str | None = Query(default=None, alias="list"),
        status: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Subscriptions with their consent record, one row per reader and list."""
        rows = await readers_io.export_rows(app, await list_or_404(list_slug))
        if status:
            rows = [r for r in rows if r["status"] == status]
        limit, offset = max(0, min(limit, 10_000)), max(0, offset)
        return {"subscribers": rows[offset : offset + limit], "total": len(rows)}

    @api.get("/api/subscribers/export", dependencies=authorized, tags=["operator"])
    async def api_export(list_slug: str | None = Query(default=None, alias="list")) -> Response:
        """Every subscription as CSV (the columns of `digest subscribers export`)."""
        rows = await readers_io.export_rows(app, await list_or_404(list_slug))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=readers_io.EXPORT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_safe(v) for k, v in row.items()})
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'},
        )

    @api.get("/api/subscribers/{address}", dependencies=authorized, tags=["operator"])
    async def api_subscriber(address: str) -> dict[str, Any]:
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

    @api.post("/api/subscribers", dependencies=authorized, status_code=201, tags=["operator"])
    async def api_add(body: SubscriberIn, request: Request) -> dict[str, Any]:
        """Add a reader: confirmed at once if you hold consent, else pending with a confirmation email."""
        known = [lst.slug for lst in await _active(app)]
        fields: dict[str, object] = body.model_dump()
        fields["list"], fields["consent"] = fields.pop("lists"), True
        consent = readers.Consent(ip=client_ip(request), user_agent=user_agent(request), source="api")
        try:
            item = signup_form.parse_signup(fields, known, consent)
        except signup_form.SignupInvalid as exc:
            raise ApiError(422, "invalid", "Some fields need fixing.", fields=exc.fields) from None
        now = clock()
        if body.confirmed:
            async with app.db.write() as s:
                for slug in item.lists:
                    lst = await sources_store.list_by_slug(s, slug)
                    assert lst is not None
                    await readers.add_subscription(
                        s,
                        lst,
                        item.address,
                        item.prefs,
                        confirmed=True,
                        now=now,
                        consent=consent,
                        method="api",
                    )
        else:
            await signup.request_confirmation(app, item, now, method="api", hourly_budget=None)
            if wake is not None:
                wake.set()
        async with app.db.read() as s:
            reader = await readers_store.subscriber_by_email(s, item.address.casefold())
            subs = await readers_store.subscriptions_of(s, reader.id) if reader else []
        return {
            "email": item.address,
            "subscriptions": [{"list": lst.slug, "status": sub.status} for sub, lst in subs],
        }

    @api.delete("/api/subscribers/{address}", dependencies=authorized, tags=["operator"])
    async def api_remove(
        address: str, list_slug: str | None = Query(default=None, alias="list"), erase: bool = False
    ) -> dict[str, Any]:
        """Unsubscribe a reader (method `operator`) from one list or all; `erase=true` deletes all."""
        _, key = _address_key(address)
        list_id = await list_or_404(list_slug)
        async with app.db.write() as s:
            reader = await readers_store.subscriber_by_email(s, key)
            if reader is None:
                raise ApiError(404, "not_found", "no such subscriber")
            if erase:
                await readers_store.delete_subscriber(s, reader.id)
                return {"email": reader.email, "erased": True}
            left = []
            for sub, lst in await readers_store.subscriptions_of(s, reader.id):
                wanted = list_id is None or lst.id == list_id
                if wanted and await readers.unsubscribe(s, sub, "operator", clock()):
                    left.append(lst.slug)
        return {"email": reader.email, "unsubscribed": left}

    @api.post("/api/sources/{name}/articles", dependencies=authorized, status_code=201, tags=["operator"])
    async def api_push(name: str, body: ArticleBatch | ArticleIn) -> dict[str, int]:
        """Push articles into a source of kind `api`; they are normalized like ingested ones."""
        if name not in {src.name for src in app.cfg.sources}:
            raise ApiError(404, "not_found", f"no source {name!r}")
        async with app.db.read() as s:
            source = await sources_store.source_by_name(s, name)
        if source is None:
            raise ApiError(404, "not_found", f"no source {name!r}")
        if source.kind != "api":
            raise ApiError(409, "wrong_kind", f"source {name!r} is of kind {source.kind}, not api")
        now = clock()
        items = [api_article(a, now) for a in (body.articles if isinstance(body, ArticleBatch) else [body])]
        async with app.db.write() as s:
            stored = await sources_store.store_articles(s, source.id, items, now)
        return {"received": len(items), "stored": stored}

    api.add_middleware(_Guard, base_origin=base_origin)
    return api


async def _active(app: bootstrap.App) -> list[Any]:
    async with app.db.read() as s:
        return list(await sources_store.active_lists(s))


def _address_key(address: str) -> tuple[str, str]:
    try:
        return readers.normalize_address(address)
    except DigestError:
        raise ApiError(404, "not_found", "no such subscriber") from None


def _csv_safe(value: str) -> str:
    # A cell starting with = + - @ runs as a formula in spreadsheets (CSV injection).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _join(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


async def admin_view(app: bootstrap.App, now: datetime, hours: int = 24) -> dict[str, Any]:
    """What the admin page shows, read in one transaction."""
    async with app.db.read() as s:
        lists = list(await sources_store.active_lists(s))
        readers = await reports_store.list_reader_counts(s, None)
        editions = await reports_store.edition_counts(s, None, limit=15)
        sent_times = await reports_store.sent_times_since(s, now - timedelta(hours=hours))
        events = await reports_store.recent_reader_events(s, ["bounced", "complained", "unsubscribed"], 20)
        depth, oldest = await reports_store.queue_summary(s, now)
        sent_last_minute = await reports_store.sent_since(s, now - timedelta(minutes=1))
    per_list: dict[str, dict[str, int]] = {lst.slug: {} for lst in lists}
    for slug, status, _, n in readers:
        if slug in per_list:
            per_list[slug][status] = per_list[slug].get(status, 0) + n
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    buckets = [0] * hours
    for t in sent_times:
        i = int((t - start).total_seconds() // 3600)
        if 0 <= i < hours:
            buckets[i] += 1
    peak = max(buckets) or 1
    return {
        "now": now,
        "lists": [{"slug": lst.slug, "name": lst.name, "readers": per_list[lst.slug]} for lst in lists],
        "editions": [
            {
                "id": e.id,
                "list": slug,
                "created_at": e.created_at,
                "status": e.status,
                "subject": e.subject,
                "counts": counts,
                "pause_reason": e.pause_reason,
            }
            for e, slug, counts in editions
        ],
        "hours": [
            {"label": f"{start + timedelta(hours=i):%H}:00", "count": n, "percent": round(100 * n / peak)}
            for i, n in enumerate(buckets)
        ],
        "sent_total": sum(buckets),
        "events": [
            {
                "at": t,
                "kind": k,
                "address": a or "-",
                "detail": str(d.get("bounce_class") or d.get("method") or d.get("reply") or "")[:120],
            }
            for t, k, d, a in events
        ],
        "queue_depth": depth,
        "queue_age": (now - oldest) if oldest else None,
        "sent_last_minute": sent_last_minute,
    }
