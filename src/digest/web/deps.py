"""What the routes share, reached through FastAPI dependencies.

`create_app` keeps one WebState on `app.state.web`. A route asks for it, or for the part it needs,
with a parameter annotated `Web`, `DigestApp` or `Now`; helpers that already hold the request
(page rendering, rate limits, client addresses) call `web_state(request)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from digest import bootstrap, signup_form
from digest.web import auth, csrf, limits
from digest.web.work import WorkQueue


@dataclass(frozen=True)
class WebState:
    app: bootstrap.App
    clock: Callable[[], datetime]
    base_url: str
    templates: Jinja2Templates
    forms: csrf.FormGuard
    secure_cookie: bool
    limiter: limits.RateLimiter
    trust: limits.ProxyTrust
    consent_text: str
    consent_version: str
    min_fill: timedelta
    confirmations_per_hour: int | None
    wake: asyncio.Event | None  # set whenever mail was queued, so the delivery loop sends it at once
    work: WorkQueue  # what a request hands off, run off the connection's path
    admin_sessions: auth.AdminSessions


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


# The dependencies are coroutines so that FastAPI calls them on the event loop, not in a thread.
async def _web(request: Request) -> WebState:
    return web_state(request)


Web = Annotated[WebState, Depends(_web)]


async def _digest_app(web: Web) -> bootstrap.App:
    return web.app


async def _now(web: Web) -> datetime:
    return web.clock()


DigestApp = Annotated[bootstrap.App, Depends(_digest_app)]
Now = Annotated[datetime, Depends(_now)]


def client_ip(request: Request) -> str | None:
    """The peer's address, or the one a trusted proxy forwarded for."""
    forwarded = ", ".join(request.headers.getlist("x-forwarded-for")) or None
    peer = request.client.host if request.client else None
    return web_state(request).trust.client_ip(peer, forwarded)


def user_agent(request: Request) -> str | None:
    return signup_form.clean_text(request.headers.get("user-agent", ""), signup_form.TEXT_MAX) or None
