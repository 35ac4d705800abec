"""HTML answers of the reader pages, and what their routes share: forms and rate limits.

A page with a form carries a CSRF token (csrf.py) minted for the browser's cookie, which is set
on the response when the browser has none yet. Pages are never cached: they hold tokens.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any
from zoneinfo import available_timezones

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import FormData

from digest import signup, signup_form, tokens
from digest.rendering import TOKEN_PLACEHOLDER
from digest.web import csrf
from digest.web.deps import client_ip, web_state
from digest.web.errors import wants_json
from digest.web.guard import MAX_BODY

log = logging.getLogger("digest")

TOKEN = re.compile(r"[A-Za-z0-9_-]{1,100}")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
ZONES = sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/")))
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_INERT = frozenset({tokens.TEST_TOKEN, "archive", "preview", TOKEN_PLACEHOLDER})


def readable(router: APIRouter, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A GET page that also answers HEAD (which, like GET, changes nothing)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        router.add_api_route(path, fn, methods=["GET"], response_class=HTMLResponse, tags=["pages"])
        router.add_api_route(path, fn, methods=["HEAD"], response_class=HTMLResponse, include_in_schema=False)
        return fn

    return register


def page(
    request: Request, template: str, status: int = 200, *, form: bool = False, **context: Any
) -> HTMLResponse:
    web = web_state(request)
    cookie, fresh = web.forms.cookie_value(request.cookies.get(csrf.COOKIE)) if form else ("", False)
    response = web.templates.TemplateResponse(
        request,
        template,
        {
            "base_url": web.base_url,
            "csp_nonce": getattr(request.state, "csp_nonce", ""),
            "csrf_field": csrf.FIELD,
            "csrf_token": web.forms.token_for(cookie) if form else "",
            "notice": None,
            # Every page says whose it is, and carries the same postal address as the mail.
            "publication": signup.sender_name(web.app),
            "postal_address": web.app.cfg.sender.postal_address,
            **context,
        },
        status_code=status,
    )
    if fresh:
        response.set_cookie(
            csrf.COOKIE, cookie, httponly=True, samesite="lax", secure=web.secure_cookie, path="/"
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


def unknown(request: Request) -> HTMLResponse:
    return message(
        request,
        "Link not recognised",
        "This link is not valid. If you copied it, check that it is complete.",
        status=404,
    )


def not_a_reader(request: Request, token: str) -> HTMLResponse | None:
    """The page for a token that names no reader: one that stands in for a reader's (test sends,
    public copies) or is malformed. None for a token worth looking up."""
    if token == tokens.TEST_TOKEN:
        return message(request, "This was a test", "This link came from a test send, so it does nothing.")
    if token in _INERT:
        return message(
            request,
            "Public copy",
            "This is the public copy of a digest; its links belong to no reader.",
            link={"url": f"{web_state(request).base_url}/subscribe", "text": "Subscribe"},
        )
    return None if TOKEN.fullmatch(token) else unknown(request)


async def rate_limited(request: Request) -> Response | None:
    """None while the client is within the signup rate limits, else the 429 to answer."""
    web = web_state(request)
    wait = await web.limiter.check(web.app.db, client_ip(request) or "unknown", web.clock())
    if wait is None:
        return None
    minutes = max(1, round(wait / 60))
    retry = {"Retry-After": str(max(1, int(wait + 0.999)))}
    text = f"Too many requests from your network. Please wait about {minutes} minute(s) and try again."
    if wants_json(request):
        return JSONResponse(
            {"error": {"code": "rate_limited", "message": text}}, status_code=429, headers=retry
        )
    return message(request, "Please slow down", text, status=429, headers=retry)


async def read_form(request: Request) -> FormData | None:
    try:
        return await request.form(max_files=0, max_fields=200, max_part_size=MAX_BODY)
    except Exception:
        return None


def csrf_ok(request: Request, form: FormData) -> bool:
    return web_state(request).forms.valid(request.cookies.get(csrf.COOKIE), form.get(csrf.FIELD))


def web_url(value: object) -> str | None:
    """An http(s) URL a client sent (Referer, Origin, a form field), cleaned; else None."""
    if not isinstance(value, str):
        return None
    text = signup_form.clean_text(value, signup_form.TEXT_MAX)
    return text if re.match(r"https?://[^\s/]+", text) else None


def join_names(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]
