"""The admin page: a read-only operator overview of what `reports.admin_overview` gathers.

It takes the `[api] token` as `Authorization: Bearer`, or a session cookie that the login form
sets (auth.py): a browser signs in with a POST, never with the token in a URL.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from digest import reports
from digest.web import auth
from digest.web.deps import DigestApp, Now, Web, WebState
from digest.web.render import csrf_ok, message, page, read_form

router = APIRouter(include_in_schema=False)


def login_page(request: Request, *paragraphs: str, status: int) -> HTMLResponse:
    response = page(
        request, "admin_login.html", status, form=True, title="Operator sign-in", paragraphs=paragraphs
    )
    response.headers["referrer-policy"] = "no-referrer"
    return response


def _signed_in(request: Request, web: WebState, now: datetime) -> bool:
    return web.admin_sessions.valid(request.cookies.get(auth.COOKIE), web.app.cfg.api.token, now)


@router.get("/admin", response_class=HTMLResponse)
async def admin(request: Request, web: Web, app: DigestApp, now: Now) -> HTMLResponse:
    """Read-only operator overview: lists, recent editions, sends per hour, bounces, unsubscribes."""
    if not app.cfg.api.token:
        return message(request, "Admin is off", "Set [api] token in the config to use this page.", status=403)
    session = _signed_in(request, web, now)
    if not session and not auth.bearer_ok(request, app.cfg.api.token):
        return login_page(request, "Sign in with the operator token.", status=401)
    overview = await reports.admin_overview(app, now)
    peak = max((h.sent for h in overview.sends_per_hour), default=0) or 1
    response = page(
        request,
        "admin.html",
        form=session,
        session=session,
        title="digest: operator overview",
        overview=overview,
        hours=[(f"{h.hour:%H}:00", h.sent, round(100 * h.sent / peak)) for h in overview.sends_per_hour],
        sent_total=sum(h.sent for h in overview.sends_per_hour),
    )
    response.headers["referrer-policy"] = "no-referrer"  # reader addresses are on the page
    return response


@router.post("/admin/login", response_class=HTMLResponse)
async def admin_login(request: Request, web: Web, now: Now) -> Response:
    """The login form: the right token sets a 12-hour session cookie; a wrong one gets no hint."""
    token = web.app.cfg.api.token
    if not token:
        return message(request, "Admin is off", "Set [api] token in the config to use this page.", status=403)
    form = await read_form(request)
    if form is None or not csrf_ok(request, form):
        return login_page(request, "This form had expired. Please sign in again.", status=403)
    given = form.get("token")
    if not isinstance(given, str) or not auth.token_matches(given.strip(), token):
        return login_page(request, "Not authorized.", status=401)
    response = RedirectResponse(f"{web.base_url}/admin", status_code=303)
    response.set_cookie(
        auth.COOKIE,
        web.admin_sessions.mint(token, now),
        max_age=int(auth.SESSION.total_seconds()),
        path="/admin",
        secure=web.secure_cookie,
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/admin/logout", response_class=HTMLResponse)
async def admin_logout(request: Request, web: Web) -> Response:
    form = await read_form(request)
    if form is None or not csrf_ok(request, form):
        return login_page(request, "This form had expired. Please sign in again.", status=403)
    response = RedirectResponse(f"{web.base_url}/admin", status_code=303)
    response.delete_cookie(
        auth.COOKIE, path="/admin", secure=web.secure_cookie, httponly=True, samesite="strict"
    )
    return response
